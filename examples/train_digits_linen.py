"""train_digits.py in Flax Linen: the same CNN, data and flags, with a TrainState.

Run: python examples/train_digits_linen.py [--epochs 15] [--variant plain]
It prints the test accuracy (~98%) and writes the loss curves to
runs/train_digits_linen/train_digits.png.

Only the model and the train step differ from the NNX example (whose data
loading, batches, optimizer variants and plot it imports). The optimizer plugs
into Linen's ``TrainState`` as any optax transformation does::

  state = TrainState.create(apply_fn=model.apply, params=params,
                            tx=optax_rms.rmsprop(1e-3))
  state = state.apply_gradients(grads=grads)  # calls tx.update(g, s, params)
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from train_digits import (  # noqa: E402  (the NNX example, beside this file)
  BATCH_SIZE,
  EPOCHS,
  PLOT_NAME,
  VARIANTS,
  epoch_batches,
  load_data,
  make_optimizer,
  plot_history,
)

OUT = pathlib.Path("runs/train_digits_linen")


class CNN(nn.Module):
  """train_digits.CNN in Linen: two 3x3 convolutions, a max pool, two dense."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(32, kernel_size=(3, 3))(x))
    x = nn.relu(nn.Conv(64, kernel_size=(3, 3))(x))
    x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)  # flatten
    x = nn.relu(nn.Dense(128)(x))
    return nn.Dense(10)(x)


def _loss_and_accuracy(params, apply_fn, batch):
  logits = apply_fn({"params": params}, batch["image"])
  loss = optax.softmax_cross_entropy_with_integer_labels(
    logits=logits, labels=batch["label"]
  ).mean()
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  return loss, accuracy


@jax.jit
def train_step(state: TrainState, batch) -> tuple[TrainState, jax.Array, jax.Array]:
  """One step; returns the new state and the batch's loss and accuracy."""
  grad_fn = jax.value_and_grad(_loss_and_accuracy, has_aux=True)
  (loss, accuracy), grads = grad_fn(state.params, state.apply_fn, batch)
  return state.apply_gradients(grads=grads), loss, accuracy


@jax.jit
def eval_step(state: TrainState, batch) -> tuple[jax.Array, jax.Array]:
  return _loss_and_accuracy(state.params, state.apply_fn, batch)


def train(
  *,
  epochs: int = EPOCHS,
  learning_rate: float | None = None,
  variant: str = "plain",
  seed: int = 0,
  batch_size: int = BATCH_SIZE,
  data: dict[str, np.ndarray] | None = None,
) -> tuple[TrainState, dict[str, list[float]]]:
  """Trains CNN on the digits; returns the final TrainState and the history."""
  data = load_data() if data is None else data
  model = CNN()
  params = model.init(jax.random.key(seed), data["x_train"][:1])["params"]
  state = TrainState.create(
    apply_fn=model.apply, params=params, tx=make_optimizer(variant, learning_rate)
  )
  history: dict[str, list[float]] = {
    k: []
    for k in ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
  }
  x_train, y_train = data["x_train"], data["y_train"]
  test_batch = {"image": data["x_test"], "label": data["y_test"]}
  for epoch in range(1, epochs + 1):
    losses, accuracies = [], []
    for idx in epoch_batches(seed, epoch, len(x_train), batch_size):
      state, loss, accuracy = train_step(
        state, {"image": x_train[idx], "label": y_train[idx]}
      )
      losses.append(loss)
      accuracies.append(accuracy)
    test_loss, test_accuracy = eval_step(state, test_batch)
    history["epoch"].append(epoch)
    # One host transfer per epoch: the step results stay on device until here.
    history["train_loss"].append(float(np.mean(jax.device_get(losses))))
    history["train_accuracy"].append(float(np.mean(jax.device_get(accuracies))))
    history["test_loss"].append(float(test_loss))
    history["test_accuracy"].append(float(test_accuracy))
    print(
      f"epoch {epoch}/{epochs}: train loss {history['train_loss'][-1]:.4f}, "
      f"test loss {history['test_loss'][-1]:.4f}, "
      f"test accuracy {history['test_accuracy'][-1]:.2%}"
    )
  return state, history


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=int, default=EPOCHS)
  parser.add_argument(
    "--learning-rate", type=float, default=None, help="default: the variant's"
  )
  parser.add_argument("--variant", choices=list(VARIANTS), default="plain")
  parser.add_argument(
    "--out", type=pathlib.Path, default=OUT, help=f"plot (default {OUT})"
  )
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  start = time.perf_counter()
  state, history = train(
    epochs=args.epochs,
    learning_rate=args.learning_rate,
    variant=args.variant,
    seed=args.seed,
  )
  seconds = time.perf_counter() - start
  plot = args.out / PLOT_NAME
  plot_history(history, plot, f"digits (Linen), optax_rms {args.variant} RMSprop")
  print(
    f"test accuracy: {history['test_accuracy'][-1]:.2%} "
    f"(variant {args.variant}, {args.epochs} epochs, {seconds:.1f} s)"
  )
  print(f"loss curves: {plot}")
  return {"state": state, "history": history}


if __name__ == "__main__":
  main()
