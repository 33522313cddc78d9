"""The one place where TensorFlow tensors meet the engine: import checks and buffer conversion.

The engine's ops work on torch CPU tensors.  A TensorFlow tensor crosses over as a NumPy array
(``torch.from_numpy`` shares its memory) and the result comes back the same way.  Eagerly the host
function runs at once; inside a ``tf.function`` it becomes one ``tf.numpy_function`` node, which
TensorFlow runs in program order with the other stateful ops, so every rank issues its ops in the
same order.

Example::

    [y] = run_on_host(lambda ts: [ts[0] * 2], [x], [x.shape])
"""

import os
import re
from typing import Callable, List, Sequence

# TensorFlow prints INFO lines (CPU feature notes) on import; keep warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

try:
    import tensorflow as tf
except ImportError as error:   # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "bluefog.tensorflow needs TensorFlow, which is not installed here "
        f"({error}). Install it with: pip install 'bluefog-gossip[tensorflow]'  "
        "(or pip install tensorflow-cpu).") from error

import numpy as np
import torch

from bluefog.ops.common import ALLREDUCE_DTYPES, FLOAT_DTYPES, MOVE_DTYPES


def _tf_dtypes(torch_dtypes) -> frozenset:
    return frozenset(tf.as_dtype(str(d).replace("torch.", "")) for d in torch_dtypes)


# The dtypes each op family accepts, taken from the torch ops' tables (spec §3.2).
ALLREDUCE_TYPES = _tf_dtypes(ALLREDUCE_DTYPES)
FLOAT_TYPES = _tf_dtypes(FLOAT_DTYPES)
MOVE_TYPES = _tf_dtypes(MOVE_DTYPES)


def as_input(tensor, op: str, allowed: frozenset) -> tf.Tensor:
    """``tensor`` (tf.Tensor, Variable, NumPy array, ...) as a dense tf.Tensor of an allowed dtype.

    Raises:
        ValueError: for ``tf.IndexedSlices`` or a dtype the op does not take.
    """
    if isinstance(tensor, tf.IndexedSlices):
        raise ValueError(f"{op}: tf.IndexedSlices are not supported; convert them to a dense tensor "
                         "first with tf.convert_to_tensor(slices).")
    tensor = tf.convert_to_tensor(tensor)
    if tensor.dtype not in allowed:
        names = ", ".join(sorted(d.name for d in allowed))
        raise ValueError(f"{op}: tensor dtype {tensor.dtype.name} is not supported; {op} takes "
                         f"{names}.")
    return tensor


def graph_name(name, tensor, prefix: str):
    """The engine name of an op: the user's, or inside a graph one derived from the tensor's name
    (deterministic on every rank that traces the same function).  Eagerly ``None`` (the engine
    then numbers nameless ops in submission order)."""
    if name is not None or tf.executing_eagerly():
        return name
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9_.-]', '_', tensor.name)}"


def to_torch(array) -> torch.Tensor:
    """A NumPy array (or scalar) as a torch tensor sharing its memory where NumPy allows."""
    array = np.asarray(array, order="C")   # (np.ascontiguousarray would make 0-d arrays 1-d)
    if not array.flags.writeable:   # torch warns on read-only buffers; the ops never write inputs
        array = array.copy()
    return torch.from_numpy(array)


def run_on_host(host: Callable[[List[torch.Tensor]], Sequence[torch.Tensor]], tensors, shapes,
                dtypes=None, op_name: str = "bluefog") -> List[tf.Tensor]:
    """Run ``host`` (torch tensors in, torch tensors out) on ``tensors``.

    ``shapes`` are the static output shapes (``None`` dims where unknown) and ``dtypes`` the output
    dtypes (default: the inputs').  Eagerly it runs now; in a graph it is one ``tf.numpy_function``.
    """
    dtypes = [t.dtype for t in tensors] if dtypes is None else list(dtypes)

    def on_numpy(*arrays):
        outputs = host([to_torch(a) for a in arrays])
        return [o.numpy() for o in outputs]

    if tf.executing_eagerly():
        return [tf.convert_to_tensor(a) for a in on_numpy(*[t.numpy() for t in tensors])]
    outputs = tf.numpy_function(on_numpy, list(tensors), dtypes, stateful=True, name=op_name)
    for output, shape in zip(outputs, shapes):
        output.set_shape(shape)
    return list(outputs)
