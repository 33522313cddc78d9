"""Training helpers for TensorFlow / Keras 3: broadcast_variables, DistributedGradientTape, and a
distributed wrapper for Keras optimizers (usable in custom loops and in ``model.fit``).

The helpers move whole lists of tensors in one host call: every tensor is submitted before any is
waited for, so the engine can fuse them into few messages.

Example (``model.fit``)::

    import bluefog.tensorflow as bf
    bf.init()
    opt = bf.DistributedOptimizer(keras.optimizers.Adam(1e-3), communication="neighbor_allreduce")
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    model.fit(x_shard, y_shard, callbacks=[bf.BroadcastVariablesCallback(root_rank=0)])
"""

from typing import Callable, Dict, List

import keras
import tensorflow as tf

from bluefog import basics
from bluefog.ops import collective as _c
from bluefog.ops import neighbor as _n
from bluefog.tensorflow.bridge import FLOAT_TYPES, MOVE_TYPES, as_input, run_on_host
from bluefog.tensorflow.ops import run_all

COMMUNICATIONS = ("allreduce", "neighbor_allreduce")

# Same-width stand-ins for dtypes the engine does not carry; broadcast only moves bits.
_CARRIERS = {tf.uint16: tf.int16, tf.uint32: tf.int32, tf.uint64: tf.int64, tf.bfloat16: tf.int16,
             tf.bool: tf.uint8}


def _group(start, tensors: List[tf.Tensor], names: List[str], arguments: Callable[[], Dict],
           op_name: str) -> List[tf.Tensor]:
    """``start`` (a nonblocking torch op) on every tensor in one host call; ``arguments()`` gives
    its keyword arguments when the call runs (so changes between steps apply in graphs too)."""
    if not tensors:
        return []
    return run_on_host(lambda ts: run_all(start, ts, names, **arguments()), tensors,
                       [t.shape for t in tensors], op_name=op_name)


def _to_carrier(tensor):
    carrier = _CARRIERS.get(tensor.dtype)
    if carrier is None:
        return tensor
    return tf.cast(tensor, carrier) if tensor.dtype == tf.bool else tf.bitcast(tensor, carrier)


def _from_carrier(tensor, dtype):
    if tensor.dtype == dtype:
        return tensor
    return tf.cast(tensor, dtype) if dtype == tf.bool else tf.bitcast(tensor, dtype)


def broadcast_variables(variables, root_rank, name=None):
    """Assign ``root_rank``'s value of every variable to it on every rank (collective).

    Works eagerly and inside ``tf.function``; takes ``tf.Variable`` and Keras variables of any
    fixed-width dtype.  ``name`` prefixes the engine names (default ``broadcast_variables``).

    Example::

        bf.broadcast_variables(model.variables, root_rank=0)
    """
    variables = list(variables)
    prefix = name or "broadcast_variables"
    values = [tf.convert_to_tensor(v) for v in variables]
    moved = [as_input(_to_carrier(v), "broadcast_variables", MOVE_TYPES) for v in values]
    names = [f"{prefix}.{k}" for k in range(len(moved))]
    results = _group(_c.broadcast_nonblocking, moved, names, lambda: {"root_rank": root_rank},
                     "BluefogBroadcastVariables")
    for variable, value, result in zip(variables, values, results):
        variable.assign(_from_carrier(result, value.dtype))


def _dense(gradient):
    if isinstance(gradient, tf.IndexedSlices):   # e.g. from an embedding lookup
        return tf.convert_to_tensor(gradient)
    return gradient


def average_gradients(gradients, prefix="gradients"):
    """Allreduce-average of a (nested) list of gradients; ``None`` entries stay ``None``.

    ``tf.IndexedSlices`` are made dense first.  At size 1 the gradients come back unchanged.
    """
    if basics.size() == 1:
        return gradients
    flat = tf.nest.flatten(gradients, expand_composites=False)
    where = [k for k, g in enumerate(flat) if g is not None]
    dense = [as_input(_dense(flat[k]), "average_gradients", FLOAT_TYPES) for k in where]
    averaged = _group(_c.allreduce_nonblocking, dense, [f"{prefix}.{k}" for k in where],
                      lambda: {"average": True}, "BluefogAverageGradients")
    for k, value in zip(where, averaged):
        flat[k] = value
    return tf.nest.pack_sequence_as(gradients, flat, expand_composites=False)


class DistributedGradientTape:
    """A ``tf.GradientTape`` whose :meth:`gradient` returns gradients averaged over all ranks.

    Wrap the tape after recording (or use the wrapper itself as the context manager); every other
    attribute is the tape's.

    Example::

        with tf.GradientTape() as tape:
            loss = loss_fn(model(x), y)
        tape = bf.DistributedGradientTape(tape)
        grads = tape.gradient(loss, model.trainable_variables)
    """

    def __init__(self, gradtape, device=""):
        if not isinstance(gradtape, tf.GradientTape):
            raise TypeError("DistributedGradientTape wraps a tf.GradientTape, got "
                            f"{type(gradtape).__name__}.")
        self._tape = gradtape
        self.device = device   # accepted for compatibility; tensors travel through host memory

    def __enter__(self):
        self._tape.__enter__()
        return self

    def __exit__(self, *exc):
        return self._tape.__exit__(*exc)

    def __getattr__(self, attr):
        return getattr(self._tape, attr)

    def gradient(self, target, sources, output_gradients=None, **kwargs):
        """The tape's gradients of ``target`` w.r.t. ``sources``, averaged over all ranks."""
        grads = self._tape.gradient(target, sources, output_gradients=output_gradients, **kwargs)
        return average_gradients(grads, "DistributedGradientTape")


# The Keras 3 optimizer that replaces each TF1 (``tf.compat.v1.train``) optimizer.
_KERAS_FOR_V1 = {
    "GradientDescentOptimizer": "keras.optimizers.SGD(learning_rate)",
    "MomentumOptimizer": "keras.optimizers.SGD(learning_rate, momentum=momentum)",
    "AdamOptimizer": "keras.optimizers.Adam(learning_rate)",
    "AdagradOptimizer": "keras.optimizers.Adagrad(learning_rate)",
    "AdadeltaOptimizer": "keras.optimizers.Adadelta(learning_rate)",
    "RMSPropOptimizer": "keras.optimizers.RMSprop(learning_rate)",
    "FtrlOptimizer": "keras.optimizers.Ftrl(learning_rate)",
}


def _check_optimizer(optimizer):
    """TypeError unless ``optimizer`` is a Keras 3 optimizer, saying what to use instead."""
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return
    kind = f"{type(optimizer).__module__}.{type(optimizer).__name__}"
    if isinstance(optimizer, tf.compat.v1.train.Optimizer):
        keras_name = _KERAS_FOR_V1.get(type(optimizer).__name__,
                                       "the keras.optimizers class of the same algorithm")
        raise TypeError(
            f"DistributedOptimizer got a tf.compat.v1.train optimizer ({kind}). Bluefog 0.3.0 "
            "wrapped those TF1 graph-mode optimizers; this bluefog wraps Keras 3 optimizers "
            f"only. Use {keras_name} instead and wrap it: "
            "bf.DistributedOptimizer(keras.optimizers..., communication='allreduce'). To keep a "
            "custom loop, average the gradients with bf.DistributedGradientTape(tape) or "
            "bf.average_gradients(grads) and apply them with the Keras optimizer.")
    if type(optimizer).__module__.split(".")[0] == "tf_keras":
        raise TypeError(
            f"DistributedOptimizer got a Keras 2 (tf_keras) optimizer ({kind}); it wraps Keras 3 "
            "optimizers only: use the keras.optimizers class of the same name (Keras 3, the "
            "keras package that TensorFlow >= 2.16 brings).")
    raise TypeError("DistributedOptimizer wraps a Keras 3 optimizer (keras.optimizers.Optimizer), "
                    f"got {kind}.")


@keras.saving.register_keras_serializable(package="bluefog")
class DistributedOptimizer(keras.optimizers.Optimizer):
    """A Keras 3 optimizer wrapper that keeps the ranks' models together.

    The call shape is Bluefog 0.3.0's, ``DistributedOptimizer(optimizer, name=None,
    use_locking=False, device="")`` (the second positional argument is the name), followed by
    keyword-only arguments that choose the communication.

    ``communication="allreduce"`` (the default, what 0.3.0 did) averages the gradients over all
    ranks before the wrapped optimizer's step (every rank then takes the same step).
    ``communication="neighbor_allreduce"`` lets each rank take its own step and then replaces
    each trainable variable by its neighbor average (adapt, then combine). The neighbor weights
    are the attributes ``self_weight``, ``src_weights``, ``dst_weights`` and
    ``enable_topo_check`` (same meaning as in ``neighbor_allreduce``; ``None`` means the
    topology's), read at every step, so a callback may change them between steps for dynamic
    topologies.

    Works with ``model.compile(optimizer=...)`` / ``model.fit`` and with custom training loops
    (``opt.apply(grads, variables)``). The communication runs as host callbacks, so compile with
    ``jit_compile=False`` where XLA would otherwise be used (GPU machines). Start every rank from
    the same weights (:func:`broadcast_variables` or :class:`BroadcastVariablesCallback`).
    ``device`` and ``use_locking`` are accepted and ignored. 0.3.0 wrapped TF1
    ``tf.compat.v1.train`` optimizers; those raise a ``TypeError`` naming the Keras 3 optimizer to
    use instead.

    Example::

        opt = bf.DistributedOptimizer(keras.optimizers.SGD(0.1), communication="allreduce")
        model.compile(optimizer=opt, loss="mse", jit_compile=False)

    Raises:
        TypeError: ``optimizer`` is not a Keras 3 optimizer (a ``tf.compat.v1.train`` or Keras 2
            optimizer, or anything else), or ``name`` is not a string.
        ValueError: unknown ``communication``, a communication mode passed as the positional
            ``name``, or Keras does not run on TensorFlow.
    """

    def __init__(self, optimizer, name=None, use_locking=False, device="", *,
                 communication="allreduce", self_weight=None, src_weights=None, dst_weights=None,
                 enable_topo_check=False):
        _check_optimizer(optimizer)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"Argument name must be a string or None, got {type(name).__name__}.")
        if name in COMMUNICATIONS:
            raise ValueError(f"DistributedOptimizer(optimizer, {name!r}): the second positional "
                             "argument is the optimizer's name (as in Bluefog 0.3.0); pass the "
                             f"mode by keyword: communication={name!r}.")
        if keras.backend.backend() != "tensorflow":
            raise ValueError("DistributedOptimizer needs Keras on the TensorFlow backend "
                             f"(KERAS_BACKEND=tensorflow); this Keras runs on "
                             f"{keras.backend.backend()}.")
        if communication not in COMMUNICATIONS:
            raise ValueError(f"Argument communication must be one of {COMMUNICATIONS}, "
                             f"got {communication!r}.")
        super().__init__(learning_rate=0.0,
                         name=name or f"distributed_{type(optimizer).__name__.lower()}")
        self.inner_optimizer = optimizer
        self.communication = communication
        self.self_weight = self_weight
        self.src_weights = src_weights
        self.dst_weights = dst_weights
        self.enable_topo_check = enable_topo_check

    def build(self, var_list):
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self.inner_optimizer.learning_rate = value

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def _neighbor_arguments(self) -> Dict:
        plain = lambda v: dict(v) if isinstance(v, dict) else v   # Keras tracks dict attributes
        return dict(self_weight=self.self_weight, src_weights=plain(self.src_weights),
                    dst_weights=plain(self.dst_weights), enable_topo_check=self.enable_topo_check)

    def apply(self, grads, trainable_variables=None):
        """Communicate as configured around the wrapped optimizer's ``apply``."""
        if trainable_variables is not None:
            trainable_variables = list(trainable_variables)
        if not self.built:
            self.build(trainable_variables)
            self.built = True
        variables = (self.inner_optimizer._trainable_variables if trainable_variables is None
                     else trainable_variables)
        grads = list(grads)
        if self.communication == "allreduce":
            grads = average_gradients(grads, "DistributedOptimizer.grad")
        self.inner_optimizer.apply(grads, trainable_variables)
        if self.communication == "neighbor_allreduce" and basics.size() > 1:
            values = [as_input(v, "DistributedOptimizer", FLOAT_TYPES) for v in variables]
            names = [f"DistributedOptimizer.weight.{k}" for k in range(len(values))]
            mixed = _group(_n.neighbor_allreduce_nonblocking, values, names,
                           self._neighbor_arguments, "BluefogNeighborAverage")
            for variable, value in zip(variables, mixed):
                variable.assign(value)

    def get_config(self):
        return {"name": self.name, "communication": self.communication,
                "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
                **self._neighbor_arguments()}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(config.pop("optimizer"),
                                                      custom_objects=custom_objects)
        for key in ("src_weights", "dst_weights"):   # JSON made the rank keys strings
            if isinstance(config.get(key), dict):
                config[key] = {int(r): w for r, w in config[key].items()}
        return cls(inner, **config)


class BroadcastVariablesCallback(keras.callbacks.Callback):
    """Keras callback: broadcast the model's variables from ``root_rank`` when training begins.

    Example::

        model.fit(x, y, callbacks=[bf.BroadcastVariablesCallback(0)])
    """

    def __init__(self, root_rank=0):
        super().__init__()
        self.root_rank = root_rank

    def on_train_begin(self, logs=None):
        broadcast_variables(self.model.variables, self.root_rank)
