"""Decentralized Keras training on scikit-learn's handwritten digits (8x8 images, 10 classes).

Every rank trains the same small network on its own shard of the training set with ``model.fit``.
By default each rank takes its own Adam step and then averages its weights with its neighbors
(``communication="neighbor_allreduce"``, the exponential-2 graph); ``--allreduce`` averages the
gradients over all ranks instead, so every rank takes the same step.

Run::

    bfrun -np 4 python examples/tensorflow_digits.py
    bfrun -np 4 python examples/tensorflow_digits.py --allreduce

Needs ``pip install 'bluefog-gossip[tensorflow]' scikit-learn`` (``pip install -e '.[tensorflow]'
scikit-learn`` in a checkout); the data ships with scikit-learn (nothing is downloaded).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import bluefog.tensorflow as bf  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allreduce", action="store_true",
                        help="average gradients over all ranks instead of neighbor weight averaging")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def load_shard(rank, size, seed):
    """This rank's slice of the training set, and the whole test set (the same split everywhere)."""
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed,
                                                        stratify=y)
    return x_train[rank::size], y_train[rank::size], x_test, y_test


def build_model():
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])


def main(argv=None):
    args = parse_args(argv)
    bf.init()
    rank, size = bf.rank(), bf.size()
    keras.utils.set_random_seed(args.seed + rank)   # different shuffles; weights come from rank 0
    x_train, y_train, x_test, y_test = load_shard(rank, size, args.seed)

    communication = "allreduce" if args.allreduce else "neighbor_allreduce"
    model = build_model()
    optimizer = bf.DistributedOptimizer(keras.optimizers.Adam(args.lr), communication=communication)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=False)
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
              callbacks=[bf.BroadcastVariablesCallback(root_rank=0)])

    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    accuracies = bf.allgather(tf.constant([accuracy], tf.float64)).numpy()
    # How far apart the ranks' models ended up (0 for allreduce).
    flat = tf.concat([tf.reshape(v, [-1]) for v in model.trainable_variables], axis=0)
    spread = float(tf.reduce_max(tf.abs(flat - bf.allreduce(flat))))
    spread = float(bf.allreduce(tf.constant(spread, tf.float64), average=False)) / size
    if rank == 0:
        print(f"{communication} on {size} ranks, {args.epochs} epochs: test accuracy "
              f"{100 * accuracies.mean():.2f}% (ranks: "
              f"{', '.join(f'{100 * a:.2f}' for a in accuracies)}); "
              f"mean max weight deviation from the average model {spread:.2e}")
    return float(accuracies.mean())


if __name__ == "__main__":
    main()
