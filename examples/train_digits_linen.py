"""train_digits.py in Flax Linen: the same CNN, data and flags, with a TrainState.

Run: python examples/train_digits_linen.py [--epochs 15] [--variant plain]
It prints the test accuracy (~98%) and writes the loss curves to
runs/train_digits_linen/<variant>/train_digits.png. ``--checkpoint-every N``
and ``--resume`` work as in train_digits.py (orbax; the TrainState's step,
params and opt_state are saved)::

  python examples/train_digits_linen.py --epochs 2 --checkpoint-every 1
  python examples/train_digits_linen.py --epochs 4 --resume

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
import orbax.checkpoint as ocp
from flax.training.train_state import TrainState

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from train_digits import (  # noqa: E402  (the NNX example, beside this file)
  BATCH_SIZE,  # noqa: F401  (the default, through resolve_config)
  EPOCHS,
  PLOT_NAME,
  add_run_arguments,
  epoch_batches,
  load_data,
  make_optimizer,
  open_checkpoints,
  plot_history,
  resolve_config,
)

RUNS = pathlib.Path("runs/train_digits_linen")  # --out defaults to RUNS / variant


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


def _save(mngr, epoch: int, state: TrainState, meta: dict[str, Any]) -> None:
  arrays = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
  mngr.save(
    epoch,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)
    ),
  )


def _restore(mngr, epoch: int, state: TrainState) -> TrainState:
  """``state`` with checkpoint ``epoch``'s step, params and optimizer state."""
  # The target's structure, shapes and dtypes come from the fresh TrainState
  # (its opt_state is the optimizer's own NamedTuples).
  target = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = mngr.restore(
    epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
  )["state"]
  return state.replace(**restored)


def train(
  *,
  epochs: int = EPOCHS,
  learning_rate: float | None = None,
  variant: str | None = None,
  out: str | pathlib.Path | None = None,
  checkpoint_every: int | None = None,
  resume: bool = False,
  seed: int | None = None,
  batch_size: int | None = None,
  data: dict[str, np.ndarray] | None = None,
) -> tuple[TrainState, dict[str, list[float]], dict[str, Any]]:
  """Trains CNN on the digits; returns the final TrainState, history, config.

  The arguments are train_digits.train's: ``epochs`` counts those of a resumed
  run; ``variant``, ``learning_rate``, ``seed`` and ``batch_size`` left None
  are the checkpoint's when resuming, else plain, the variant's rate, 0 and
  BATCH_SIZE; ``out`` (None: RUNS / variant) holds ``checkpoints``.
  """
  out = RUNS / (variant or "plain") if out is None else pathlib.Path(out)
  data = load_data() if data is None else data
  asked = {
    "variant": variant,
    "learning_rate": learning_rate,
    "seed": seed,
    "batch_size": batch_size,
  }
  mngr, latest, meta = open_checkpoints(
    out, resume=resume, checkpoint_every=checkpoint_every, asked=asked
  )
  config = resolve_config(asked, meta)
  seed, batch_size = config["seed"], config["batch_size"]
  model = CNN()
  params = model.init(jax.random.key(seed), data["x_train"][:1])["params"]
  state = TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=make_optimizer(config["variant"], config["learning_rate"]),
  )
  history: dict[str, list[float]] = {
    k: []
    for k in ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
  }
  start = 0
  if meta is not None:
    state = _restore(mngr, latest, state)
    start, history = meta["epoch"], meta["history"]
    if checkpoint_every is None:
      checkpoint_every = meta["checkpoint_every"]
    print(f"Resumed from epoch {start} ({out / 'checkpoints'}).")
  elif resume:
    print(f"No checkpoint in {out / 'checkpoints'}: training from scratch.")
  checkpoint_every = checkpoint_every or 0

  x_train, y_train = data["x_train"], data["y_train"]
  test_batch = {"image": data["x_test"], "label": data["y_test"]}
  for epoch in range(start + 1, epochs + 1):
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
    if (
      mngr is not None
      and checkpoint_every
      and (epoch % checkpoint_every == 0 or epoch == epochs)
    ):
      meta = {
        **config,
        "epoch": epoch,
        "checkpoint_every": checkpoint_every,
        "history": history,
      }
      _save(mngr, epoch, state, meta)
  if mngr is not None:
    mngr.wait_until_finished()
    mngr.close()
  return state, history, config


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_run_arguments(parser, RUNS)
  args = parser.parse_args(argv)
  out = RUNS / (args.variant or "plain") if args.out is None else args.out

  start = time.perf_counter()
  state, history, config = train(
    epochs=args.epochs,
    learning_rate=args.learning_rate,
    variant=args.variant,
    out=out,
    checkpoint_every=args.checkpoint_every,
    resume=args.resume,
    seed=args.seed,
  )
  seconds = time.perf_counter() - start
  plot = out / PLOT_NAME
  variant = config["variant"]
  plot_history(history, plot, f"digits (Linen), optax_rms {variant} RMSprop")
  print(
    f"test accuracy: {history['test_accuracy'][-1]:.2%} "
    f"(variant {variant}, {args.epochs} epochs, {seconds:.1f} s)"
  )
  print(f"loss curves: {plot}")
  return {"state": state, "history": history, "config": config}


if __name__ == "__main__":
  main()
