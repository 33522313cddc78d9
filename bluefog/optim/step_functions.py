"""One-parameter update rules for adapt-then-combine (ATC), written to match torch's own optimizers.

ATC updates each parameter inside its backward hook, before the other parameters have their
gradients, so it needs the optimizer's math for a single parameter.  Each function here has the
signature ``fn(optimizer, p, grad, group)``, updates ``p`` in place and keeps its state in
``optimizer.state[p]`` with the same keys, dtypes and lazy initialisation as torch's single-tensor
implementation (``step`` is a 0-d tensor), so ATC steps and ordinary ``step()`` calls of the base
optimizer can be mixed and ``state_dict()`` looks the same.

Example::

    def my_sgd(opt, p, grad, group):
        p.add_(grad, alpha=-group["lr"])
    opt.register_step_function(my_sgd)
"""

import torch


def _scalar_dtype():
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _step_counter():
    return torch.zeros((), dtype=_scalar_dtype())


def _direction(p, grad, group):
    """The gradient with ``maximize`` and (coupled) ``weight_decay`` applied."""
    if group.get("maximize", False):
        grad = -grad
    if group.get("weight_decay", 0) != 0:
        grad = grad.add(p, alpha=group["weight_decay"])
    return grad


def sgd_step(optimizer, p, grad, group):
    """torch.optim.SGD: weight decay, momentum with dampening, Nesterov, maximize."""
    grad = _direction(p, grad, group)
    momentum = group.get("momentum", 0)
    if momentum != 0:
        state = optimizer.state[p]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = grad.detach().clone()
            state["momentum_buffer"] = buf
        else:
            buf.mul_(momentum).add_(grad, alpha=1 - group.get("dampening", 0))
        grad = grad.add(buf, alpha=momentum) if group.get("nesterov", False) else buf
    p.add_(grad, alpha=-group["lr"])


def adam_step(optimizer, p, grad, group):
    """torch.optim.Adam: bias correction, AMSGrad, maximize, coupled or decoupled weight decay."""
    state = optimizer.state[p]
    if len(state) == 0:
        state["step"] = _step_counter()
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group.get("amsgrad", False):
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    if group.get("maximize", False):
        grad = -grad
    state["step"] += 1
    weight_decay = group.get("weight_decay", 0)
    if weight_decay != 0:
        if group.get("decoupled_weight_decay", False):
            p.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(p, alpha=weight_decay)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step = float(state["step"])
    step_size = lr / (1 - beta1 ** step)
    correction2_sqrt = (1 - beta2 ** step) ** 0.5
    second = exp_avg_sq
    if group.get("amsgrad", False):
        torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
        second = state["max_exp_avg_sq"]
    denom = (second.sqrt() / correction2_sqrt).add_(eps)
    p.addcdiv_(exp_avg, denom, value=-step_size)


def rmsprop_step(optimizer, p, grad, group):
    """torch.optim.RMSprop: centred variant, momentum, weight decay, maximize."""
    state = optimizer.state[p]
    if len(state) == 0:
        state["step"] = _step_counter()
        state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group.get("momentum", 0) > 0:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group.get("centered", False):
            state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    grad = grad if not group.get("maximize", False) else -grad
    state["step"] += 1
    if group.get("weight_decay", 0) != 0:
        grad = grad.add(p, alpha=group["weight_decay"])
    alpha = group["alpha"]
    square_avg = state["square_avg"]
    square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    if group.get("centered", False):
        grad_avg = state["grad_avg"]
        grad_avg.lerp_(grad, 1 - alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = square_avg.sqrt()
    avg = avg.add_(group["eps"])
    if group.get("momentum", 0) > 0:
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).addcdiv_(grad, avg)
        p.add_(buf, alpha=-group["lr"])
    else:
        p.addcdiv_(grad, avg, value=-group["lr"])


def adagrad_step(optimizer, p, grad, group):
    """torch.optim.Adagrad: learning-rate decay, weight decay, maximize (dense gradients)."""
    state = optimizer.state[p]
    if len(state) == 0:
        state["step"] = _step_counter()
        state["sum"] = torch.full_like(p, group.get("initial_accumulator_value", 0),
                                       memory_format=torch.preserve_format)
    state["step"] += 1
    step = float(state["step"])
    grad = _direction(p, grad, group)
    clr = group["lr"] / (1 + (step - 1) * group.get("lr_decay", 0))
    state["sum"].addcmul_(grad, grad, value=1)
    std = state["sum"].sqrt().add_(group["eps"])
    p.addcdiv_(grad, std, value=-clr)


def adadelta_step(optimizer, p, grad, group):
    """torch.optim.Adadelta: running averages of squared gradients and updates, weight decay."""
    state = optimizer.state[p]
    if len(state) == 0:
        state["step"] = _step_counter()
        state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["acc_delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["step"] += 1
    grad = _direction(p, grad, group)
    rho, eps = group["rho"], group["eps"]
    square_avg, acc_delta = state["square_avg"], state["acc_delta"]
    square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
    std = square_avg.add(eps).sqrt_()
    delta = acc_delta.add(eps).sqrt_().div_(std).mul_(grad)
    acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
    p.add_(delta, alpha=-group["lr"])


BUILT_IN = (
    (torch.optim.SGD, sgd_step),
    (torch.optim.Adam, adam_step),
    (torch.optim.RMSprop, rmsprop_step),
    (torch.optim.Adagrad, adagrad_step),
    (torch.optim.Adadelta, adadelta_step),
)


def default_step_function(optimizer):
    """The built-in update rule for ``optimizer`` (chosen by ``isinstance``, as Bluefog does; torch's
    ``AdamW`` subclasses ``Adam`` and is covered through ``decoupled_weight_decay``), or None."""
    for cls, fn in BUILT_IN:
        if isinstance(optimizer, cls):
            return fn
    return None
