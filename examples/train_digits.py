"""Train a small CNN on scikit-learn's digits with optax_rms (Flax NNX).

Run: python examples/train_digits.py
It trains for 15 epochs (``--epochs``; a few seconds on a laptop CPU), shows a
progress bar per epoch with the running loss and accuracy, prints the test
accuracy (~98%) and writes the train/test loss curves to
runs/train_digits/plain/train_digits.png: ``--out`` defaults to
runs/train_digits/<variant>, so runs of different variants keep their own
plots and checkpoints.

The data is ``sklearn.datasets.load_digits`` (1797 8x8 images, bundled with
scikit-learn, no download), split 80/20 with a fixed seed. The loop is the
Flax NNX MNIST tutorial's, with only the optimizer line changed::

  optimizer = nnx.Optimizer(model, optax_rms.rmsprop(1e-3), wrt=nnx.Param)

``--variant`` picks the optimizer (see ``VARIANTS`` below for the exact
configurations and ``--learning-rate`` for each one's default rate):

  plain     optax_rms.rmsprop(lr)                      Hinton's RMSprop
  centered  optax_rms.rmsprop(lr, centered=True)       Graves 2013
  momentum  optax_rms.rmsprop(lr, momentum=0.9)        optax-style momentum
  pytorch   compat.pytorch(lr=lr)                      torch.optim.RMSprop defaults:
                                                       alpha=0.99, eps=1e-8 outside
                                                       the sqrt
  keras     compat.keras(learning_rate=lr)             Keras 3 defaults: rho=0.9,
                                                       epsilon=1e-7
  tf1       compat.tf1(lr, decay=0.9, momentum=0.9,    the TF1 TPU recipes
                       epsilon=1e-3)                   (EfficientNet, MobileNet)
  mxnet     compat.mxnet(lr, gamma1=0.9, gamma2=0.9,   MXNet's centered RMSProp
                         centered=True)                (Graves, with momentum)
  timm      compat.timm(lr, alpha=0.9, eps=1e-3,       timm's ``rmsproptf``
                        momentum=0.9,                  recipe
                        weight_decay=1e-5)

Checkpoints (orbax): ``--checkpoint-every N`` saves the model, the optimizer
state and the epoch under ``OUT/checkpoints`` every N epochs and after the
last one; ``--resume`` restores the latest and trains on up to ``--epochs``
(give the same ``--out``, or ``--variant`` for the default one).
Batches are a pure function of (seed, epoch), so a resumed run sees the same
batches and ends with the same parameters as an uninterrupted one::

  python examples/train_digits.py --epochs 2 --checkpoint-every 1
  python examples/train_digits.py --epochs 4 --resume
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

EPOCHS = 15
BATCH_SIZE = 32
SPLIT_SEED = 0  # the train/test split never changes
RUNS = pathlib.Path("runs/train_digits")  # --out defaults to RUNS / variant
PLOT_NAME = "train_digits.png"

# variant -> (optimizer for a learning rate, default learning rate). The
# momentum variants take a smaller rate: their steps add up over ~1/(1-0.9) =
# 10 steps.
VARIANTS: dict[str, tuple[Callable[[float], optax.GradientTransformation], float]] = {
  "plain": (lambda lr: optax_rms.rmsprop(lr), 1e-3),
  "centered": (lambda lr: optax_rms.rmsprop(lr, centered=True), 1e-3),
  "momentum": (lambda lr: optax_rms.rmsprop(lr, momentum=0.9), 3e-4),
  "pytorch": (lambda lr: optax_rms.compat.pytorch(lr=lr), 1e-3),
  "keras": (lambda lr: optax_rms.compat.keras(learning_rate=lr), 1e-3),
  "tf1": (
    lambda lr: optax_rms.compat.tf1(lr, decay=0.9, momentum=0.9, epsilon=1e-3),
    1e-3,
  ),
  "mxnet": (
    lambda lr: optax_rms.compat.mxnet(lr, gamma1=0.9, gamma2=0.9, centered=True),
    3e-4,
  ),
  "timm": (
    lambda lr: optax_rms.compat.timm(
      lr, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=1e-5
    ),
    1e-3,
  ),
}


# --rounding: how bfloat16 parameters (--param-dtype bfloat16) take their
# updates (float32 parameters pass through every wrapper untouched).
ROUNDINGS: dict[str, Callable[..., optax.GradientTransformation]] = {
  "nearest": lambda tx, seed: tx,  # optax.apply_updates' own rounding
  "kahan": lambda tx, seed: optax_rms.kahan_summation(tx),
  "stochastic": lambda tx, seed: optax_rms.stochastic_rounding(tx, seed=seed),
}


def make_optimizer(
  variant: str, learning_rate: float | None = None
) -> optax.GradientTransformation:
  """The optimizer of ``variant`` (a key of VARIANTS), at its default rate."""
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}.")
  factory, default_lr = VARIANTS[variant]
  return factory(default_lr if learning_rate is None else learning_rate)


def default_out(variant: str | None) -> pathlib.Path:
  """Where a run of ``variant`` (None: plain) writes by default."""
  return RUNS / ("plain" if variant is None else variant)


def add_run_arguments(parser: argparse.ArgumentParser, runs: pathlib.Path) -> None:
  """The flags this example and the Linen one share (epochs, rate, variant,
  output folder, checkpoints, seed); `runs`: where outputs go by default."""
  parser.add_argument(
    "--epochs",
    type=int,
    default=EPOCHS,
    help=f"epochs to train, counting those of a resumed run (default {EPOCHS})",
  )
  parser.add_argument(
    "--learning-rate",
    type=float,
    default=None,
    help="default: the variant's ("
    + ", ".join(f"{k} {lr:g}" for k, (_, lr) in VARIANTS.items())
    + ")",
  )
  parser.add_argument(
    "--variant",
    choices=list(VARIANTS),
    default=None,
    help="default: plain (with --resume: the checkpoint's)",
  )
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=None,
    help=f"plot and checkpoints (default {runs}/<variant>)",
  )
  parser.add_argument(
    "--checkpoint-every",
    type=int,
    default=None,
    metavar="N",
    help="save every N epochs and after the last (default: never; with --resume, "
    "as the resumed run)",
  )
  parser.add_argument(
    "--resume", action="store_true", help="continue from the latest checkpoint"
  )
  parser.add_argument(
    "--seed",
    type=int,
    default=None,
    help="default: 0 (with --resume: the checkpoint's)",
  )


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_run_arguments(parser, RUNS)
  parser.add_argument(
    "--param-dtype", choices=["float32", "bfloat16"], default="float32"
  )
  parser.add_argument(
    "--rounding",
    choices=list(ROUNDINGS),
    default="nearest",
    help="how bfloat16 parameters take their updates (default: nearest)",
  )
  return parser


if __name__ == "__main__":
  # Parse before the imports below: --help (and a mistyped flag) answers at
  # once instead of after the seconds that importing jax, flax and optax take.
  ARGS = build_parser().parse_args()

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import optax_rms

# ------------------------------------------------------------------------ data


def load_data() -> dict[str, np.ndarray]:
  """Digits as (n, 8, 8, 1) float32 images in [0, 1] and int32 labels."""
  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  labels = digits.target.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(
    images, labels, test_size=0.2, random_state=SPLIT_SEED, stratify=labels
  )
  return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def epoch_batches(seed: int, epoch: int, n: int, batch_size: int) -> np.ndarray:
  """Indices of epoch ``epoch``'s batches, shape (n // batch_size, batch_size).

  A pure function of (seed, epoch): a resumed run sees the same batches. The
  last partial batch is dropped (a fixed shape compiles once); a different
  permutation every epoch drops different examples.
  """
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  n_batches = n // batch_size
  return perm[: n_batches * batch_size].reshape(n_batches, batch_size)


# ----------------------------------------------------------------------- model


class CNN(nnx.Module):
  """Two 3x3 convolutions, a 2x2 max pool and two dense layers (151k params)."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
    self.max_pool = functools.partial(nnx.max_pool, window_shape=(2, 2), strides=(2, 2))
    self.linear1 = nnx.Linear(4 * 4 * 64, 128, rngs=rngs)
    self.linear2 = nnx.Linear(128, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv1(x))
    x = self.max_pool(nnx.relu(self.conv2(x)))
    x = x.reshape(x.shape[0], -1)  # flatten
    x = nnx.relu(self.linear1(x))
    return self.linear2(x)


def loss_fn(model: CNN, batch):
  logits = model(batch["image"])
  loss = optax.softmax_cross_entropy_with_integer_labels(
    logits=logits, labels=batch["label"]
  ).mean()
  return loss, logits


@nnx.jit
def train_step(model: CNN, optimizer: nnx.Optimizer, metrics: nnx.MultiMetric, batch):
  """Train for a single step."""
  grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
  (loss, logits), grads = grad_fn(model, batch)
  metrics.update(loss=loss, logits=logits, labels=batch["label"])
  optimizer.update(model, grads)  # In-place updates.


@nnx.jit
def eval_step(model: CNN, metrics: nnx.MultiMetric, batch):
  loss, logits = loss_fn(model, batch)
  metrics.update(loss=loss, logits=logits, labels=batch["label"])


# ----------------------------------------------------------------- checkpoints


def _checkpoint_manager(out: pathlib.Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
    (out / "checkpoints").absolute(),
    options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
  )


def _save(mngr, epoch, model, optimizer, meta):
  state = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
  mngr.save(
    epoch,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
    ),
  )


def _read_meta(mngr, epoch) -> dict[str, Any]:
  """The run's configuration and history saved with checkpoint ``epoch``."""
  return mngr.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
    "meta"
  ]


def open_checkpoints(
  out: pathlib.Path,
  *,
  resume: bool,
  checkpoint_every: int | None,
  asked: dict[str, Any],
) -> tuple[ocp.CheckpointManager | None, int | None, dict[str, Any] | None]:
  """The checkpoint manager of ``out``, its latest epoch and that one's meta.

  Args:
    out: the run's directory (checkpoints in ``out/checkpoints``).
    resume: continue from the latest checkpoint (if any).
    checkpoint_every: this run's; a manager is opened if it is set or resuming.
    asked: the run's configuration (variant, learning_rate, seed, batch_size),
      None where not given.

  Returns:
    (manager or None, latest epoch or None, meta of the latest checkpoint when
    resuming from one, else None).

  Raises:
    ValueError: resuming, ``asked`` sets something to another value than the
      checkpoint's (another optimizer would not fit the saved state).
    FileExistsError: checkpointing a new run into ``out`` that has checkpoints.
  """
  mngr = None
  latest = None
  meta = None
  if resume or checkpoint_every:
    mngr = _checkpoint_manager(out)
    latest = mngr.latest_step()
  if resume and latest is not None:
    meta = _read_meta(mngr, latest)
    clash = {k: v for k, v in asked.items() if v is not None and v != meta[k]}
    if clash:
      raise ValueError(
        f"--resume: the checkpoint in {out / 'checkpoints'} was trained with "
        f"{ {k: meta[k] for k in clash} }, this run asks for {clash}."
      )
  elif checkpoint_every and latest is not None:
    raise FileExistsError(
      f"{out / 'checkpoints'} already holds checkpoints (latest: epoch {latest}). "
      "Pass --resume to continue from them, or choose another --out."
    )
  return mngr, latest, meta


def resolve_config(
  asked: dict[str, Any], meta: dict[str, Any] | None
) -> dict[str, Any]:
  """The run's configuration: as asked, else the checkpoint's, else defaults."""
  if meta is not None:
    asked = {k: meta[k] if v is None else v for k, v in asked.items()}
  variant = "plain" if asked["variant"] is None else asked["variant"]
  defaults = {
    "variant": variant,
    "learning_rate": VARIANTS[variant][1] if variant in VARIANTS else None,
    "seed": 0,
    "batch_size": BATCH_SIZE,
  }
  return {k: defaults[k] if v is None else v for k, v in asked.items()}


def _restore(mngr, epoch, model, optimizer) -> None:
  """Loads checkpoint ``epoch``'s model and optimizer state into them."""
  # The target's shapes and dtypes come from the freshly built model and
  # optimizer, as they would in a new process.
  abstract = nnx.eval_shape(
    lambda: {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
  )
  restored = mngr.restore(
    epoch,
    args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)),
  )
  nnx.update(model, restored["state"]["model"])
  nnx.update(optimizer, restored["state"]["optimizer"])


# -------------------------------------------------------------------- training


class TrainResult(NamedTuple):
  model: CNN
  optimizer: nnx.Optimizer
  params: nnx.State  # the model's nnx.Param variables
  history: dict[str, list[float]]  # per epoch: epoch, train/test loss/accuracy
  test_accuracy: float
  test_loss: float
  config: dict[str, Any]  # variant, learning_rate, seed, batch_size


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
  progress: bool = True,
  param_dtype: str = "float32",
  rounding: str = "nearest",
) -> TrainResult:
  """Trains CNN on the digits for ``epochs`` epochs (in all, when resuming).

  Args:
    epochs: the epoch to stop after, counting those of a resumed run.
    learning_rate: None: the variant's default (VARIANTS).
    variant: a key of VARIANTS; None: "plain".
    out: directory of the checkpoints (``out/checkpoints``); None:
      ``default_out(variant)``.
    checkpoint_every: save every N epochs and after the last one; 0 never.
      None: 0, or the resumed run's value.
    resume: continue from the latest checkpoint under ``out`` (if any).
      ``variant``, ``learning_rate``, ``seed`` and ``batch_size`` left None
      are the checkpoint's; given, they must equal the checkpoint's.
    seed: model initialisation and shuffling; None: 0.
    batch_size: examples per step; None: BATCH_SIZE.
    data: ``load_data()``'s dict (loaded if None).
    progress: show a tqdm bar per epoch.
    param_dtype: "float32" or "bfloat16" (the parameters are stored in it;
      the layers compute in float32, and the gradients come in its dtype).
    rounding: a key of ROUNDINGS: "nearest", "kahan" or "stochastic".
  """
  out = default_out(variant) if out is None else pathlib.Path(out)
  data = load_data() if data is None else data
  asked = {
    "variant": variant,
    "learning_rate": learning_rate,
    "seed": seed,
    "batch_size": batch_size,
  }
  # What this run leaves unset comes from the checkpoint; what it sets must
  # agree with it.
  mngr, latest, meta = open_checkpoints(
    out, resume=resume, checkpoint_every=checkpoint_every, asked=asked
  )
  config = resolve_config(asked, meta)
  variant, seed, batch_size = config["variant"], config["seed"], config["batch_size"]

  model = CNN(rngs=nnx.Rngs(seed))
  params = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda p: p.astype(param_dtype), params))
  tx = ROUNDINGS[rounding](make_optimizer(variant, config["learning_rate"]), seed)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  metrics = nnx.MultiMetric(
    accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss")
  )
  history: dict[str, list[float]] = {
    k: []
    for k in ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
  }
  start = 0
  if meta is not None:
    _restore(mngr, latest, model, optimizer)
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
    batches = epoch_batches(seed, epoch, len(x_train), batch_size)
    with tqdm(
      total=len(batches), desc=f"epoch {epoch}/{epochs}", disable=not progress
    ) as bar:
      for idx in batches:
        batch = {"image": x_train[idx], "label": y_train[idx]}
        train_step(model, optimizer, metrics, batch)
        if progress:  # the running mean over this epoch's batches so far
          m = metrics.compute()
          bar.set_postfix(
            loss=f"{m['loss']:.4f}", acc=f"{m['accuracy']:.3f}", refresh=False
          )
        bar.update()
      train_metrics = metrics.compute()
      metrics.reset()
      eval_step(model, metrics, test_batch)
      test_metrics = metrics.compute()
      metrics.reset()
      history["epoch"].append(epoch)
      for split, m in (("train", train_metrics), ("test", test_metrics)):
        history[f"{split}_loss"].append(float(m["loss"]))
        history[f"{split}_accuracy"].append(float(m["accuracy"]))
      bar.set_postfix(
        loss=f"{history['train_loss'][-1]:.4f}",
        acc=f"{history['train_accuracy'][-1]:.3f}",
        test_loss=f"{history['test_loss'][-1]:.4f}",
        test_acc=f"{history['test_accuracy'][-1]:.3f}",
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
      _save(mngr, epoch, model, optimizer, meta)
  if mngr is not None:
    mngr.wait_until_finished()
    mngr.close()

  if history["epoch"] and history["epoch"][-1] == epochs:
    test_loss, test_accuracy = history["test_loss"][-1], history["test_accuracy"][-1]
  else:  # nothing left to train after a resume: evaluate the restored model
    eval_step(model, metrics, test_batch)
    m = metrics.compute()
    test_loss, test_accuracy = float(m["loss"]), float(m["accuracy"])
  return TrainResult(
    model=model,
    optimizer=optimizer,
    params=nnx.state(model, nnx.Param),
    history=history,
    test_accuracy=test_accuracy,
    test_loss=test_loss,
    config=config,
  )


def plot_history(history: dict[str, Any], path: pathlib.Path, title: str) -> None:
  """Writes the train/test loss curves (log scale) to ``path`` (PNG)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
  ax.plot(history["epoch"], history["train_loss"], "o-", label="train (running mean)")
  ax.plot(history["epoch"], history["test_loss"], "s-", label="test")
  ax.set_yscale("log")
  ax.set_xlabel("epoch")
  ax.set_ylabel("cross-entropy loss")
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> TrainResult:
  """Parses ``argv`` (None: the command line) and runs the example."""
  return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> TrainResult:
  """Trains as the command line ``args`` ask, writes the plot, prints results."""
  out = default_out(args.variant) if args.out is None else args.out
  start = time.perf_counter()
  result = train(
    epochs=args.epochs,
    learning_rate=args.learning_rate,
    variant=args.variant,
    out=out,
    checkpoint_every=args.checkpoint_every,
    resume=args.resume,
    seed=args.seed,
    param_dtype=args.param_dtype,
    rounding=args.rounding,
  )
  seconds = time.perf_counter() - start
  plot = out / PLOT_NAME
  variant = result.config["variant"]
  plot_history(result.history, plot, f"digits, optax_rms {variant} RMSprop")
  print(
    f"test accuracy: {result.test_accuracy:.2%} (test loss {result.test_loss:.4f}, "
    f"variant {variant}, {args.epochs} epochs, {seconds:.1f} s)"
  )
  print(f"loss curves: {plot}")
  return result


if __name__ == "__main__":
  run(ARGS)
