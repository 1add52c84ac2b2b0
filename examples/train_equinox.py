"""Train a small CNN on scikit-learn's digits with optax_rms (Equinox).

Run: python examples/train_equinox.py
It trains for 10 epochs (``--epochs``; a few seconds on a laptop CPU), shows a
progress bar per epoch with the running loss, prints the test accuracy (~98%)
and writes the train/test loss curves to runs/train_equinox/train_equinox.png
(``--out`` sets the folder).

The model is an ``eqx.Module``, and the loop is the one of Equinox's own CNN
tutorial, with only the optimizer line changed::

  optim = optax_rms.rmsprop(1e-3)
  opt_state = optim.init(eqx.filter(model, eqx.is_array))

``eqx.filter(model, eqx.is_array)`` keeps the model's arrays (its weights) and
replaces everything else (activation functions, shapes) by None: the optimizer
sees, and keeps state for, the weights only.

The data and its batches are examples/train_digits.py's (``load_data``,
``epoch_batches``): the same 80/20 split of ``sklearn.datasets.load_digits``,
so the two examples' accuracies compare.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import optax_rms

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from train_digits import epoch_batches, load_data  # noqa: E402

EPOCHS = 10
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
OUT = pathlib.Path("runs/train_equinox")
PLOT_NAME = "train_equinox.png"


class CNN(eqx.Module):
  """Two 3x3 convolutions, a 2x2 max pool and two linear layers (151k params).

  Equinox layers take one example, channels first: ``(1, 8, 8)`` in, 10
  logits out; ``jax.vmap`` maps it over a batch.
  """

  conv1: eqx.nn.Conv2d
  conv2: eqx.nn.Conv2d
  pool: eqx.nn.MaxPool2d
  linear1: eqx.nn.Linear
  linear2: eqx.nn.Linear

  def __init__(self, key: jax.Array):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    self.conv1 = eqx.nn.Conv2d(1, 32, kernel_size=3, padding=1, key=k1)
    self.conv2 = eqx.nn.Conv2d(32, 64, kernel_size=3, padding=1, key=k2)
    self.pool = eqx.nn.MaxPool2d(kernel_size=2, stride=2)
    self.linear1 = eqx.nn.Linear(64 * 4 * 4, 128, key=k3)
    self.linear2 = eqx.nn.Linear(128, 10, key=k4)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.conv1(x))
    x = self.pool(jax.nn.relu(self.conv2(x)))
    x = jax.nn.relu(self.linear1(x.reshape(-1)))
    return self.linear2(x)


def loss_fn(model: CNN, x: jax.Array, y: jax.Array) -> jax.Array:
  logits = jax.vmap(model)(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@eqx.filter_jit
def make_step(
  model: CNN,
  opt_state: optax.OptState,
  optim: optax.GradientTransformation,
  x: jax.Array,
  y: jax.Array,
) -> tuple[CNN, optax.OptState, jax.Array]:
  """One optimizer step; ``optim`` is static (filter_jit traces arrays only)."""
  loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
  updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_array))
  model = eqx.apply_updates(model, updates)
  return model, opt_state, loss


@eqx.filter_jit
def evaluate(model: CNN, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean cross-entropy loss and accuracy over (x, y)."""
  logits = jax.vmap(model)(x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, (jnp.argmax(logits, axis=-1) == y).mean()


def channels_first(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """load_data()'s (n, 8, 8, 1) images as Equinox's (n, 1, 8, 8)."""
  return {
    k: v.transpose(0, 3, 1, 2) if k.startswith("x_") else v for k, v in data.items()
  }


class TrainResult(NamedTuple):
  model: CNN
  opt_state: optax.OptState
  history: dict[str, list[float]]  # per epoch: epoch, train/test loss, test acc
  test_accuracy: float
  test_loss: float


def train(
  *,
  epochs: int = EPOCHS,
  learning_rate: float = LEARNING_RATE,
  seed: int = 0,
  batch_size: int = BATCH_SIZE,
  data: dict[str, np.ndarray] | None = None,
  progress: bool = True,
) -> TrainResult:
  """Trains CNN on the digits with optax_rms.rmsprop for ``epochs`` epochs.

  Args:
    epochs: passes over the training split.
    learning_rate: rmsprop's learning rate.
    seed: model initialisation and shuffling.
    batch_size: examples per step (the last partial batch of an epoch is
      dropped, so every step has one shape and compiles once).
    data: ``load_data()``'s dict (loaded if None).
    progress: show a tqdm bar per epoch.
  """
  data = channels_first(load_data() if data is None else data)
  model = CNN(jax.random.key(seed))
  optim = optax_rms.rmsprop(learning_rate)
  opt_state = optim.init(eqx.filter(model, eqx.is_array))

  history: dict[str, list[float]] = {
    k: [] for k in ("epoch", "train_loss", "test_loss", "test_accuracy")
  }
  x_train, y_train = data["x_train"], data["y_train"]
  for epoch in range(1, epochs + 1):
    batches = epoch_batches(seed, epoch, len(x_train), batch_size)
    losses = []  # this epoch's, as arrays: summed once at its end
    with tqdm(batches, desc=f"epoch {epoch}/{epochs}", disable=not progress) as bar:
      for idx in bar:
        model, opt_state, loss = make_step(
          model, opt_state, optim, x_train[idx], y_train[idx]
        )
        losses.append(loss)
        if progress:  # the last batch's (a host sync: the bar's price)
          bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
      test_loss, test_acc = evaluate(model, data["x_test"], data["y_test"])
      history["epoch"].append(epoch)
      history["train_loss"].append(float(np.mean(losses)))
      history["test_loss"].append(float(test_loss))
      history["test_accuracy"].append(float(test_acc))
      bar.set_postfix(
        loss=f"{history['train_loss'][-1]:.4f}",
        test_loss=f"{float(test_loss):.4f}",
        test_acc=f"{float(test_acc):.3f}",
      )
  test_loss, test_acc = evaluate(model, data["x_test"], data["y_test"])
  return TrainResult(model, opt_state, history, float(test_acc), float(test_loss))


def plot_history(history: dict[str, Any], path: pathlib.Path) -> None:
  """Writes the train/test loss curves (log scale) to ``path`` (PNG)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
  ax.plot(history["epoch"], history["train_loss"], "o-", label="train (epoch mean)")
  ax.plot(history["epoch"], history["test_loss"], "s-", label="test")
  ax.set_yscale("log")
  ax.set_xlabel("epoch")
  ax.set_ylabel("cross-entropy loss")
  ax.set_title("digits, Equinox CNN, optax_rms.rmsprop")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"default {EPOCHS}")
  parser.add_argument(
    "--learning-rate", type=float, default=LEARNING_RATE, help="default %(default)g"
  )
  parser.add_argument("--seed", type=int, default=0, help="default 0")
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=OUT,
    help=f"folder of the plot (default {OUT})",
  )
  return parser


def main(argv: Sequence[str] | None = None) -> TrainResult:
  """Parses ``argv`` (None: the command line), trains, writes the plot."""
  args = build_parser().parse_args(argv)
  start = time.perf_counter()
  result = train(epochs=args.epochs, learning_rate=args.learning_rate, seed=args.seed)
  seconds = time.perf_counter() - start
  plot = args.out / PLOT_NAME
  plot_history(result.history, plot)
  print(
    f"test accuracy: {result.test_accuracy:.2%} (test loss {result.test_loss:.4f}, "
    f"{args.epochs} epochs, {seconds:.1f} s)"
  )
  print(f"loss curves: {plot}")
  return result


if __name__ == "__main__":
  main()
