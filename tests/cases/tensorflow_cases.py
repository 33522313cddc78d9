"""bluefog.tensorflow (spec §10) on every rank: ops against NumPy references, gradients against
finite differences of the loss summed over all ranks, eager and ``tf.function``, Keras training."""

import json
import os

import networkx as nx
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import bluefog.tensorflow as bf  # noqa: E402
from casetools import expect_error, timeout  # noqa: E402

INT_AND_FLOAT = [tf.int32, tf.int64, tf.float16, tf.float32, tf.float64]
MOVE = [tf.uint8, tf.int8, tf.int16] + INT_AND_FLOAT


def _graph(fn, **kwargs):
    """``tf.function`` without AutoGraph (the cases' lambdas need no conversion)."""
    return tf.function(fn, autograph=False, reduce_retracing=True, **kwargs)


def _value(rank, dtype, shape):
    return tf.cast(tf.fill(shape, rank + 1), dtype)


def _x(rank, shape=(2, 3)):
    """float64 data that differs per rank and per element."""
    return (rank + 1) * 10.0 + np.arange(np.prod(shape), dtype=np.float64).reshape(shape)


def _close(actual, expected, atol=1e-6):
    actual = np.asarray(actual.numpy() if hasattr(actual, "numpy") else actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.allclose(actual, expected, atol=atol), (actual, expected)


def _predecessors(topology, r):
    return sorted(j for j in topology.predecessors(r) if j != r)


# ----------------------------------------------------------------------------------- plain ops
def case_allreduce_every_dtype_eager_and_graph():
    n, r = bf.size(), bf.rank()
    total = n * (n + 1) / 2
    graph_sum = _graph(lambda t: bf.allreduce(t, average=False))
    for dtype in INT_AND_FLOAT:
        for shape in [(5,), (4, 3), ()]:
            x = _value(r, dtype, shape)
            for out in (bf.allreduce(x, average=False, name=f"s{dtype.name}{shape}"), graph_sum(x)):
                assert out.dtype == dtype and out.shape == x.shape
                _close(out, np.full(shape, total))
            if dtype.is_floating:
                _close(bf.allreduce(x), np.full(shape, total / n), atol=1e-3)
    x = tf.constant(_x(r))
    expected = sum(_x(k) for k in range(n)) / n
    _close(bf.allreduce(x, name="named"), expected)
    _close(_graph(bf.allreduce)(x), expected)
    # the same tensor twice in one graph: default names repeat, the ops run one after the other
    twice = _graph(lambda t: bf.allreduce(t) + bf.allreduce(t, average=False))
    for _ in range(3):
        _close(twice(x), expected * (n + 1))


def case_broadcast_every_root_and_dtype():
    n, r = bf.size(), bf.rank()
    graph = _graph(bf.broadcast)
    for root in range(n):
        for dtype in MOVE:
            out = bf.broadcast(_value(r, dtype, (3, 2)), root, name=f"b{root}{dtype.name}")
            assert out.dtype == dtype
            _close(out, np.full((3, 2), root + 1))
        _close(graph(tf.constant(_x(r)), root), _x(root))
    _close(bf.broadcast(tf.constant(float(r)), root_rank=0), 0.0)


def case_allgather_variable_first_dims():
    n, r = bf.size(), bf.rank()
    expected = np.concatenate([np.full((k + 1, 2), k) for k in range(n)])
    for dtype in MOVE:
        out = bf.allgather(tf.cast(tf.fill((r + 1, 2), r), dtype), name=f"ag{dtype.name}")
        assert out.dtype == dtype
        _close(out, expected)
    graph = _graph(bf.allgather, input_signature=[tf.TensorSpec([None, 2], tf.float64)])
    out = graph(tf.fill((r + 1, 2), tf.constant(r, tf.float64)))
    assert out.shape.as_list() == [sum(range(1, n + 1)), 2]
    _close(out, expected)
    empty = bf.allgather(tf.zeros((0, 3)))
    assert empty.shape == (0, 3)


def case_neighbor_allreduce_modes_against_numpy():
    n, r = bf.size(), bf.rank()
    xs = [_x(k) for k in range(n)]
    x = tf.constant(xs[r])
    graph = _graph(lambda t: bf.neighbor_allreduce(t))
    topo = bf.load_topology()
    ins = _predecessors(topo, r)
    uniform = (xs[r] + sum(xs[j] for j in ins)) / (len(ins) + 1)
    _close(bf.neighbor_allreduce(x), uniform)
    _close(graph(x), uniform)
    weights = {j: 1.0 for j in ins}
    _close(bf.neighbor_allreduce(x, self_weight=1.0, src_weights=weights),
           xs[r] + sum(xs[j] for j in ins))
    if ins:   # partial static weights: the others count 0
        _close(bf.neighbor_allreduce(x, self_weight=0.5, src_weights={ins[0]: 0.5}),
               0.5 * xs[r] + 0.5 * xs[ins[0]])
    if n > 1:
        left, right = (r - 1) % n, (r + 1) % n
        moved = _graph(lambda t: bf.neighbor_allreduce(
            t, self_weight=0.0, src_weights={left: 1.0}, dst_weights=[right], name="move"))
        _close(moved(x), xs[left])
        _close(bf.neighbor_allreduce(x, self_weight=0.5, src_weights={left: 1.0},
                                     dst_weights={right: 0.5}), 0.5 * xs[r] + 0.5 * xs[left])
    ring = bf.RingGraph(n)
    bf.set_topology(ring, is_weighted=True)
    w = nx.to_numpy_array(ring, nodelist=range(n))
    _close(bf.neighbor_allreduce(x), sum(w[j, r] * xs[j] for j in range(n)))
    _close(graph(x), sum(w[j, r] * xs[j] for j in range(n)))


def case_neighbor_allgather_static_and_dynamic():
    n, r = bf.size(), bf.rank()
    ins = _predecessors(bf.load_topology(), r)
    x = tf.fill((r + 1, 2), tf.constant(r, tf.int32))
    expected = np.concatenate([np.full((j + 1, 2), j) for j in ins] or [np.zeros((0, 2))])
    _close(bf.neighbor_allgather(x), expected)
    _close(_graph(lambda t: bf.neighbor_allgather(t))(x), expected)
    if n > 2:
        others = [k for k in range(n) if k != r]
        srcs = list(np.random.default_rng(r).permutation(others))   # any order, as numpy ints
        out = bf.neighbor_allgather(x, src_ranks=np.array(srcs), dst_ranks=others)
        _close(out, np.concatenate([np.full((j + 1, 2), j) for j in srcs]))


# ----------------------------------------------------------------------------------- gradients
def _fd_check(fn, x_np, graph=False, h=1e-6, atol=1e-6):
    """Compare d(sum over ranks of L_i)/dx with central differences, one coordinate at a time.

    L_i = sum(c_i * sin(fn(x)_i)) with rank-specific c_i, so every incoming gradient differs.
    """
    n, r = bf.size(), bf.rank()
    x = tf.constant(x_np)
    coeff = tf.constant(np.random.default_rng(7 + r).uniform(0.5, 1.5, fn(x).shape))

    def local_loss(t):
        return tf.reduce_sum(tf.sin(fn(t)) * coeff)

    def analytic(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            loss = local_loss(t)
        return tape.gradient(loss, t)

    grad = (_graph(analytic) if graph else analytic)(x).numpy().reshape(-1)
    counts = bf.allgather(tf.constant([x_np.size])).numpy()
    for j in range(n):
        for k in range(counts[j]):
            step = np.zeros(x_np.size)
            if r == j:
                step[k] = h
            step = step.reshape(x_np.shape)
            up = bf.allreduce(local_loss(tf.constant(x_np + step)), average=False).numpy()
            down = bf.allreduce(local_loss(tf.constant(x_np - step)), average=False).numpy()
            if r == j:
                numeric = (up - down) / (2 * h)
                assert abs(numeric - grad[k]) < atol, (fn, j, k, numeric, grad[k])


@timeout(180)
def case_gradients_of_collectives_match_finite_differences():
    n, r = bf.size(), bf.rank()
    x = _x(r, (3,)) / 10.0
    for graph in (False, True):
        _fd_check(lambda t: bf.allreduce(t), x, graph)
        _fd_check(lambda t: bf.allreduce(t, average=False), x, graph)
        _fd_check(lambda t: bf.broadcast(t, root_rank=n - 1), x, graph)
        _fd_check(lambda t: bf.allgather(t), _x(r, (r + 1, 2)) / 10.0, graph)


@timeout(180)
def case_gradients_of_neighbor_ops_match_finite_differences():
    n, r = bf.size(), bf.rank()
    x = _x(r, (3,)) / 10.0
    ins = _predecessors(bf.load_topology(), r)
    _fd_check(lambda t: bf.neighbor_allreduce(t), x, graph=True)
    if ins:
        _fd_check(lambda t: bf.neighbor_allreduce(t, self_weight=0.3, src_weights={ins[0]: 0.7}),
                  x)
    _fd_check(lambda t: bf.neighbor_allgather(t), _x(r, (r + 1, 1)) / 10.0, graph=True)
    if n > 1:
        left, right = (r - 1) % n, (r + 1) % n
        _fd_check(lambda t: bf.neighbor_allreduce(t, self_weight=0.25, src_weights={left: 0.5},
                                                  dst_weights={right: 1.5}), x)
        srcs = [(r - 1) % n] if n == 2 else [(r - 2) % n, (r - 1) % n]
        dsts = [(r + 1) % n] if n == 2 else [(r + 1) % n, (r + 2) % n]
        _fd_check(lambda t: bf.neighbor_allgather(t, src_ranks=srcs, dst_ranks=dsts),
                  _x(r, (r + 1, 1)) / 10.0)
    bf.set_topology(bf.StarGraph(n), is_weighted=True)
    _fd_check(lambda t: bf.neighbor_allreduce(t), x)


# ----------------------------------------------------------------------------------- training
def case_broadcast_variables_and_gradient_tape():
    n, r = bf.size(), bf.rank()
    variables = [tf.Variable(_x(r)), tf.Variable(tf.fill([3], r * 7)), tf.Variable([r % 2 == 0]),
                 tf.Variable(tf.constant([r + 1], tf.uint32)), keras.Variable(np.full(4, r, "f"))]
    root = n - 1
    bf.broadcast_variables(variables, root_rank=root)
    _close(variables[0], _x(root))
    _close(variables[1], np.full(3, root * 7))
    assert variables[2].numpy().tolist() == [root % 2 == 0]
    assert variables[3].numpy().tolist() == [root + 1] and variables[3].dtype == tf.uint32
    _close(variables[4], np.full(4, root))
    v = tf.Variable(np.full(3, float(r)))
    _graph(lambda: bf.broadcast_variables([v], root_rank=0))()
    _close(v, np.zeros(3))

    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(v * (r + 1.0)) + tf.reduce_sum(tf.gather(v, [0, 0, 2]) * (r + 1.0))
    unused = tf.Variable([1.0])
    grad, nothing = bf.DistributedGradientTape(tape).gradient(loss, [v, unused])
    assert nothing is None
    mean = (n + 1) / 2
    _close(grad, [3 * mean, mean, 2 * mean])
    with bf.DistributedGradientTape(tf.GradientTape()) as tape:
        loss = tf.reduce_sum(v * v * (r + 1.0))
    grads = tape.gradient(loss, {"v": v})   # nested structures keep their shape
    _close(grads["v"], 2 * v.numpy() * mean)


def _linear_model(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])


def _mse_grads(w, b, x, y):
    err = x @ w + b - y
    scale = 2.0 / err.size
    return scale * x.T @ err, scale * err.sum(axis=0)


@timeout(240)
def case_distributed_optimizer_custom_loop_matches_numpy():
    n, r = bf.size(), bf.rank()
    rng = np.random.default_rng(3)
    data = [(rng.normal(size=(8, 4)).astype("f"), rng.normal(size=(8, 3)).astype("f"))
            for _ in range(n)]
    x, y = data[r]
    lr = 0.1
    ins = _predecessors(bf.load_topology(), r)
    for mode, graph in (("allreduce", False), ("neighbor_allreduce", True)):
        model = _linear_model(seed=r)   # different on purpose; the broadcast makes them equal
        bf.broadcast_variables(model.variables, root_rank=0)
        w0, b0 = [v.numpy().astype(np.float64) for v in model.trainable_variables]
        opt = bf.DistributedOptimizer(keras.optimizers.SGD(lr), communication=mode)

        def step():
            with tf.GradientTape() as tape:
                loss = keras.losses.mean_squared_error(y, model(x))
                loss = tf.reduce_mean(loss)
            opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

        step_fn = _graph(step) if graph else step
        step_fn()
        stepped = []
        for xk, yk in data:
            gw, gb = _mse_grads(w0, b0, xk.astype(np.float64), yk.astype(np.float64))
            stepped.append((gw, gb))
        if mode == "allreduce":
            gw = sum(g[0] for g in stepped) / n
            gb = sum(g[1] for g in stepped) / n
            expected = [w0 - lr * gw, b0 - lr * gb]
        else:
            local = [(w0 - lr * gw, b0 - lr * gb) for gw, gb in stepped]
            expected = [sum(local[j][i] for j in [r] + ins) / (len(ins) + 1) for i in (0, 1)]
        for variable, want in zip(model.trainable_variables, expected):
            _close(variable, want, atol=1e-5)
        assert int(opt.iterations.numpy()) == 1
        if mode == "neighbor_allreduce":   # weights changed between steps reach the traced step
            opt.self_weight, opt.src_weights, opt.dst_weights = 1.0, {}, []
            w1, b1 = [v.numpy().astype(np.float64) for v in model.trainable_variables]
            step_fn()
            gw, gb = _mse_grads(w1, b1, x.astype(np.float64), y.astype(np.float64))
            _close(model.trainable_variables[0], w1 - lr * gw, atol=1e-5)
            _close(model.trainable_variables[1], b1 - lr * gb, atol=1e-5)


@timeout(300)
def case_distributed_optimizer_in_model_fit():
    n, r = bf.size(), bf.rank()
    rng = np.random.default_rng(r)
    x = rng.normal(size=(64, 4)).astype("f")
    y = (x @ np.arange(12, dtype="f").reshape(4, 3) / 10).astype("f")
    for mode in ("allreduce", "neighbor_allreduce"):
        model = _linear_model(seed=r)
        opt = bf.DistributedOptimizer(keras.optimizers.Adam(0.05), communication=mode)
        model.compile(optimizer=opt, loss="mse", jit_compile=False)
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0,
                            callbacks=[bf.BroadcastVariablesCallback(root_rank=0)])
        losses = history.history["loss"]
        assert losses[-1] < losses[0], losses
        kernel = model.trainable_variables[0]
        gathered = bf.allgather(tf.reshape(kernel, [1, -1])).numpy()
        spread = np.abs(gathered - gathered.mean(axis=0)).max()
        if mode == "allreduce":
            assert spread < 1e-5, spread    # every rank took the same steps
        assert int(opt.iterations.numpy()) == 12
    opt = bf.DistributedOptimizer(keras.optimizers.Adam(0.05), "named_by_position",
                                  communication="neighbor_allreduce", self_weight=0.5,
                                  src_weights={3: 0.5}, dst_weights={2: 1.0})
    saved = json.loads(json.dumps(keras.saving.serialize_keras_object(opt)))   # as model.save
    clone = keras.saving.deserialize_keras_object(saved)
    assert isinstance(clone, bf.DistributedOptimizer) and clone.communication == "neighbor_allreduce"
    assert opt.name == clone.name == "named_by_position"
    assert isinstance(clone.inner_optimizer, keras.optimizers.Adam)
    assert dict(clone.src_weights) == {3: 0.5} and dict(clone.dst_weights) == {2: 1.0}


def case_distributed_optimizer_takes_the_0_3_0_call_shape():
    n, r = bf.size(), bf.rank()
    opt = bf.DistributedOptimizer(keras.optimizers.SGD(0.5), "legacy_name", False, "")
    assert opt.name == "legacy_name" and opt.communication == "allreduce"
    opt = bf.DistributedOptimizer(keras.optimizers.SGD(0.5), name="kw_name", use_locking=True,
                                  device="/cpu:0")
    assert opt.name == "kw_name"
    default = bf.DistributedOptimizer(keras.optimizers.SGD(0.5))
    assert default.name == "distributed_sgd" and default.communication == "allreduce"
    # the positional-name optimizer trains: one step on per-rank gradients is the averaged step
    variable = keras.Variable(np.zeros(2, dtype="float32"))
    opt.apply([tf.constant([float(r), 1.0])], [variable])
    _close(variable, [-0.5 * (n - 1) / 2, -0.5], atol=1e-6)


def case_errors_are_clear():
    n, r = bf.size(), bf.rank()
    slices = tf.IndexedSlices(tf.ones((1, 2)), tf.constant([0]), tf.constant([3, 2]))
    expect_error(ValueError, "IndexedSlices", bf.allreduce, slices)
    expect_error(ValueError, "IndexedSlices", bf.broadcast, slices, 0)
    expect_error(ValueError, "not supported", bf.allreduce, tf.constant([True]))
    expect_error(ValueError, "not supported", bf.neighbor_allreduce, tf.constant([1]))
    expect_error(AssertionError, "only float or double", bf.allreduce, tf.constant([1, 2]))
    expect_error(ValueError, "rank-zero", bf.allgather, tf.constant(1.0))
    expect_error(ValueError, "root_rank", bf.broadcast, tf.ones(2), root_rank=n)
    expect_error(ValueError, "have to be presented at the same time", bf.neighbor_allreduce,
                 tf.ones(2), self_weight=0.5)
    graph = _graph(lambda t: bf.neighbor_allreduce(t, self_weight=0.5))
    expect_error(tf.errors.InvalidArgumentError, "have to be presented at the same time", graph,
                 tf.ones(2))
    expect_error(TypeError, "Keras 3 optimizer", bf.DistributedOptimizer, object())
    expect_error(ValueError, "communication", bf.DistributedOptimizer,
                 keras.optimizers.SGD(0.1), communication="gossip")
    expect_error(TypeError, "tf.GradientTape", bf.DistributedGradientTape, object())
    # TF1 optimizers (what Bluefog 0.3.0 wrapped) get told which Keras 3 optimizer to use
    error = expect_error(TypeError, "Use keras.optimizers.SGD(learning_rate) instead",
                         bf.DistributedOptimizer, tf.compat.v1.train.GradientDescentOptimizer(0.1))
    assert "tf.compat.v1.train optimizer" in str(error) and "GradientDescentOptimizer" in str(error)
    expect_error(TypeError, "Use keras.optimizers.Adam(learning_rate) instead",
                 bf.DistributedOptimizer, tf.compat.v1.train.AdamOptimizer(0.1), "adam_v1")
    expect_error(TypeError, "the keras.optimizers class of the same algorithm",
                 bf.DistributedOptimizer, tf.compat.v1.train.ProximalGradientDescentOptimizer(0.1))
    # the 0.3.0 call shape: (optimizer, name, use_locking, device); the mode only by keyword
    expect_error(ValueError, "communication='neighbor_allreduce'", bf.DistributedOptimizer,
                 keras.optimizers.SGD(0.1), "neighbor_allreduce")
    expect_error(TypeError, "Argument name must be a string", bf.DistributedOptimizer,
                 keras.optimizers.SGD(0.1), 3)
    # the runtime is still usable after the errors
    _close(bf.allreduce(tf.constant([float(r)]), average=False), [n * (n - 1) / 2])
