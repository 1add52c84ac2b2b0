"""Train a character-level transformer LM on Python's own source with optax_rms.

Run: python examples/train_lm.py
It trains a small decoder-only transformer (Flax NNX; 2 layers, width 128,
4 heads, context 128: 0.48M parameters) for 300 steps of 32 sequences (under
two minutes on 2 idle CPU cores), shows a progress bar with the
running training loss, prints the final training and validation loss
(cross-entropy in nats per byte, from ~5.5 at the start: 2.11 / 2.20 with
the defaults, 1.81 / 1.90 with ``--variant centered-momentum``) and writes
the loss curves to runs/train_lm/train_lm.png.

The text ships with Python itself, so nothing is downloaded: the standard
library's own ``*.py`` files (those directly in ``os.path.dirname(os.__file__)``,
in sorted order) concatenated up to ``--max-bytes`` (2 MB). The vocabulary is
the 256 byte values. The last 10% of the text is held out for validation; the
loss of both splits is measured every ``--eval-every`` steps on fixed windows.
The text, and so every figure, depends on the Python version (3.11 here).
Batches are a pure function of (seed, step). The loop is the Flax NNX one,
with only the optimizer line changed::

  optimizer = nnx.Optimizer(model, optax_rms.rmsprop(lr, ...), wrt=nnx.Param)

``--variant`` picks RMSprop's form (the learning rate warms up linearly over
the first 10% of the steps, then decays to a tenth by a cosine):

  plain              optax_rms.rmsprop(lr)                      lr 3e-3
  centered           optax_rms.rmsprop(lr, centered=True)       lr 3e-3
  momentum           optax_rms.rmsprop(lr, momentum=0.9)        lr 1e-3
  centered-momentum  optax_rms.rmsprop(lr, centered=True,       lr 1e-3
                                       momentum=0.9)

``--state`` picks how the optimizer's buffers are stored (see STATES):
``float32`` (4 bytes per parameter per buffer), ``bfloat16`` (2), ``8bit-nu``
(nu in 8-bit blockwise codes, the others float32) and ``8bit-all`` (every
buffer the variant has in 8 bits: ``nu_quantization``, ``mu_quantization``
and ``momentum_quantization``). ``--param-dtype bfloat16`` keeps the
parameters themselves in bfloat16 (the forward and backward pass still
compute in float32), and ``--rounding`` picks how an update lands on them:
``nearest`` (plain ``optax.apply_updates``), ``kahan``
(``optax_rms.kahan_summation``) or ``stochastic``
(``optax_rms.stochastic_rounding``)::

  python examples/train_lm.py --variant centered-momentum --state 8bit-all
  python examples/train_lm.py --param-dtype bfloat16 --rounding kahan

benchmarks/accuracy/run.py trains it with every state mode side by side.
"""

from __future__ import annotations

import argparse
import inspect
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

STEPS = 300
BATCH_SIZE = 32
CONTEXT = 128
LAYERS = 2
D_MODEL = 128
HEADS = 4
MAX_BYTES = 2_000_000
VAL_FRACTION = 0.1  # the last 10% of the text
EVAL_WINDOWS = 256  # fixed windows of CONTEXT bytes per split per evaluation
EVAL_EVERY = 100
# A tiny model for the benchmarks' smoke tests (train(**TINY)): seconds, not minutes.
TINY = {"layers": 1, "d_model": 32, "heads": 2, "context": 16, "batch_size": 4,
        "eval_every": 0, "n_eval_windows": 8}  # fmt: skip
VOCAB = 256  # bytes
OUT = pathlib.Path("runs/train_lm")
PLOT_NAME = "train_lm.png"

# variant -> (rmsprop's keyword arguments, default peak learning rate). The
# momentum variants take a smaller rate: their steps add up over ~1/(1-0.9) =
# 10 steps. Measured (seed 0, final validation loss): plain at 1e-3, 2.23
# after 400 steps; at 3e-3, 2.20 after 300; centered-momentum at 1e-3, 1.90
# after 300.
VARIANTS: dict[str, tuple[dict[str, Any], float]] = {
  "plain": ({}, 3e-3),
  "centered": ({"centered": True}, 3e-3),
  "momentum": ({"momentum": 0.9}, 1e-3),
  "centered-momentum": ({"centered": True, "momentum": 0.9}, 1e-3),
}
STATES = ("float32", "bfloat16", "8bit-nu", "8bit-all")
PARAM_DTYPES = ("float32", "bfloat16")
ROUNDINGS = ("nearest", "kahan", "stochastic")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command line (parsed before JAX is imported, so --help is instant)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=STEPS)
  parser.add_argument("--seed", type=int, default=0, help="init and batches")
  parser.add_argument(
    "--lr",
    type=float,
    default=None,
    help="peak learning rate; default: the variant's ("
    + ", ".join(f"{k} {lr:g}" for k, (_, lr) in VARIANTS.items())
    + ")",
  )
  parser.add_argument("--variant", choices=list(VARIANTS), default="plain")
  parser.add_argument(
    "--state", choices=STATES, default="float32", help="storage of the buffers"
  )
  parser.add_argument("--param-dtype", choices=PARAM_DTYPES, default="float32")
  parser.add_argument(
    "--rounding",
    choices=ROUNDINGS,
    default="nearest",
    help="how updates land on bfloat16 parameters (float32 ones: no effect)",
  )
  parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
  parser.add_argument("--context", type=int, default=CONTEXT)
  parser.add_argument("--layers", type=int, default=LAYERS)
  parser.add_argument("--d-model", type=int, default=D_MODEL)
  parser.add_argument("--heads", type=int, default=HEADS)
  parser.add_argument("--max-bytes", type=int, default=MAX_BYTES)
  parser.add_argument("--eval-every", type=int, default=EVAL_EVERY)
  parser.add_argument("--eval-windows", type=int, default=EVAL_WINDOWS)
  parser.add_argument(
    "--out", type=pathlib.Path, default=OUT, help=f"the plot (default {OUT})"
  )
  return parser.parse_args(argv)


if __name__ == "__main__":
  _ARGS = parse_args()  # --help and bad flags answer before the imports below

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from tqdm import tqdm  # noqa: E402

import optax_rms  # noqa: E402

# ------------------------------------------------------------------ optimizer


def state_kwargs(state: str, variant: str) -> dict[str, Any]:
  """rmsprop's storage keywords for ``state``, for the buffers ``variant`` has.

  Float32 is spelled out (rather than left to the default) so that it holds
  for bfloat16 parameters too, whose buffers would otherwise be bfloat16.
  """
  if state not in STATES:
    raise ValueError(f"state must be one of {STATES}, got {state!r}.")
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}.")
  kw = VARIANTS[variant][0]
  buffers = ["nu"] + ["mu"] * bool(kw.get("centered")) + ["momentum"] * (
    kw.get("momentum") is not None
  )
  dtype = {"float32": "float32", "bfloat16": "bfloat16"}.get(state, "float32")
  out: dict[str, Any] = {f"{b}_dtype": dtype for b in buffers}
  quantized = {"8bit-nu": ["nu"], "8bit-all": buffers}.get(state, [])
  for b in quantized:
    del out[f"{b}_dtype"]
    out[f"{b}_quantization"] = "8bit"
  known = inspect.signature(optax_rms.rmsprop).parameters
  missing = [k for k in out if k not in known]
  if missing:
    raise ValueError(
      f"--state {state} with --variant {variant} needs optax_rms.rmsprop("
      f"{', '.join(f'{k}=...' for k in missing)}), which the installed "
      f"optax_rms ({optax_rms.__file__}) does not have."
    )
  return out


def learning_rate_schedule(peak: float, steps: int) -> optax.Schedule:
  """Linear warm-up over the first 10% of ``steps``, cosine decay to peak/10."""
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=peak,
    warmup_steps=max(1, steps // 10),
    decay_steps=max(2, steps),
    end_value=peak / 10,
  )


def make_optimizer(
  variant: str = "plain",
  state: str = "float32",
  *,
  learning_rate: float | None = None,
  steps: int = STEPS,
  rounding: str = "nearest",
  seed: int = 0,
) -> optax.GradientTransformation:
  """RMSprop of ``variant`` with buffers stored as ``state``, under ``rounding``."""
  kw, default_lr = VARIANTS[variant] if variant in VARIANTS else ({}, 0.0)
  storage = state_kwargs(state, variant)
  lr = default_lr if learning_rate is None else learning_rate
  tx: optax.GradientTransformation = optax_rms.rmsprop(
    learning_rate_schedule(lr, steps), **kw, **storage
  )
  if rounding not in ROUNDINGS:
    raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}.")
  if rounding == "nearest":
    return tx
  name = {"kahan": "kahan_summation", "stochastic": "stochastic_rounding"}[rounding]
  wrapper = getattr(optax_rms, name, None)
  if wrapper is None:
    raise ValueError(
      f"--rounding {rounding} needs optax_rms.{name}, which the installed "
      f"optax_rms ({optax_rms.__file__}) does not have."
    )
  return wrapper(tx) if rounding == "kahan" else wrapper(tx, seed=seed)


# ----------------------------------------------------------------------- data


def load_text(max_bytes: int = MAX_BYTES) -> bytes:
  """The standard library's ``*.py`` files, sorted by name, up to max_bytes."""
  root = pathlib.Path(os.path.dirname(os.__file__))
  chunks, size = [], 0
  for path in sorted(root.glob("*.py")):
    chunks.append(path.read_bytes())
    size += len(chunks[-1])
    if size >= max_bytes:
      break
  return b"".join(chunks)[:max_bytes]


def load_data(max_bytes: int = MAX_BYTES) -> dict[str, np.ndarray]:
  """The text as uint8 arrays: the first 90% to train on, the rest held out."""
  data = np.frombuffer(load_text(max_bytes), dtype=np.uint8)
  cut = int(len(data) * (1 - VAL_FRACTION))
  return {"train": data[:cut], "val": data[cut:]}


def windows(data: np.ndarray, starts: np.ndarray, context: int) -> np.ndarray:
  """(len(starts), context + 1) int32 windows: inputs [:, :-1], targets [:, 1:]."""
  return data[starts[:, None] + np.arange(context + 1)].astype(np.int32)


def batch(data: np.ndarray, seed: int, step: int, size: int, context: int):
  """Step ``step``'s random windows: a pure function of (seed, step)."""
  rng = np.random.default_rng([seed, step])
  return windows(data, rng.integers(0, len(data) - context - 1, size), context)


def eval_windows(data: np.ndarray, n: int, context: int) -> np.ndarray:
  """``n`` fixed windows spread evenly over ``data`` (the same every call)."""
  n = max(1, min(n, (len(data) - 1) // context))
  return windows(data, np.linspace(0, len(data) - context - 1, n).astype(int), context)


# ---------------------------------------------------------------------- model


class Block(nnx.Module):
  """Pre-LayerNorm transformer block: causal self-attention, then a GELU MLP."""

  def __init__(self, d: int, heads: int, *, param_dtype: Any, rngs: nnx.Rngs):
    dt = {"dtype": jnp.float32, "param_dtype": param_dtype, "rngs": rngs}
    self.ln1 = nnx.LayerNorm(d, **dt)
    self.attn = nnx.MultiHeadAttention(heads, d, decode=False, keep_rngs=False, **dt)
    self.ln2 = nnx.LayerNorm(d, **dt)
    self.fc1 = nnx.Linear(d, 4 * d, **dt)
    self.fc2 = nnx.Linear(4 * d, d, **dt)

  def __call__(self, x, mask):
    x = x + self.attn(self.ln1(x), mask=mask)
    return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))


class CharLM(nnx.Module):
  """Byte embeddings plus learned positions, ``layers`` blocks, a linear head."""

  def __init__(
    self,
    *,
    layers: int = LAYERS,
    d_model: int = D_MODEL,
    heads: int = HEADS,
    context: int = CONTEXT,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.embed = nnx.Embed(
      VOCAB, d_model, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs
    )
    init = nnx.initializers.normal(0.02)
    self.pos = nnx.Param(init(rngs.params(), (context, d_model), param_dtype))
    self.blocks = nnx.List(
      [Block(d_model, heads, param_dtype=param_dtype, rngs=rngs) for _ in range(layers)]
    )
    self.ln_f = nnx.LayerNorm(
      d_model, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs
    )
    self.head = nnx.Linear(
      d_model, VOCAB, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs
    )

  def __call__(self, tokens):
    t = tokens.shape[1]
    x = self.embed(tokens) + self.pos[:t].astype(jnp.float32)
    mask = nnx.make_causal_mask(tokens)
    for block in self.blocks:
      x = block(x, mask)
    return self.head(self.ln_f(x))


def loss_fn(model: CharLM, seqs):
  """Mean next-byte cross-entropy (nats) of int32 windows (batch, context+1)."""
  logits = model(seqs[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, seqs[:, 1:]).mean()


@nnx.jit
def train_step(model: CharLM, optimizer: nnx.Optimizer, seqs):
  """One step; returns the batch's loss (before the update)."""
  loss, grads = nnx.value_and_grad(loss_fn)(model, seqs)
  optimizer.update(model, grads)  # In-place updates.
  return loss


@nnx.jit
def eval_loss(model: CharLM, seqs):
  return loss_fn(model, seqs)


def evaluate(model: CharLM, seqs: np.ndarray, chunk: int = 64) -> float:
  """Mean loss over ``seqs``, in chunks of ``chunk`` windows (equal-sized)."""
  losses = [eval_loss(model, seqs[i : i + chunk]) for i in range(0, len(seqs), chunk)]
  sizes = [min(chunk, len(seqs) - i) for i in range(0, len(seqs), chunk)]
  return float(np.average(np.asarray(jax.device_get(losses)), weights=sizes))


# ------------------------------------------------------------------- training


class TrainResult(NamedTuple):
  model: CharLM
  optimizer: nnx.Optimizer
  history: dict[str, list[float]]  # per evaluation: step, train/val loss
  train_loss: float  # final, on the fixed training windows
  val_loss: float  # final, on the fixed held-out windows
  seconds: float  # the training loop, compilation included
  config: dict[str, Any]


def train(
  *,
  steps: int = STEPS,
  seed: int = 0,
  learning_rate: float | None = None,
  variant: str = "plain",
  state: str = "float32",
  param_dtype: str = "float32",
  rounding: str = "nearest",
  batch_size: int = BATCH_SIZE,
  context: int = CONTEXT,
  layers: int = LAYERS,
  d_model: int = D_MODEL,
  heads: int = HEADS,
  eval_every: int = EVAL_EVERY,
  n_eval_windows: int = EVAL_WINDOWS,
  data: dict[str, np.ndarray] | None = None,
  progress: bool = True,
) -> TrainResult:
  """Trains CharLM for ``steps`` steps; evaluates every ``eval_every`` and last.

  Args:
    steps: optimizer steps (the learning-rate schedule spans them).
    seed: model initialisation and batches.
    learning_rate: peak rate; None: the variant's default (VARIANTS).
    variant: a key of VARIANTS.
    state: one of STATES, the storage of the optimizer's buffers.
    param_dtype: "float32" or "bfloat16", the parameters' storage.
    rounding: one of ROUNDINGS, how updates land on the parameters.
    batch_size, context, layers, d_model, heads: the batch and the model.
    eval_every: steps between evaluations (0: only at the end).
    n_eval_windows: fixed windows per split per evaluation.
    data: ``load_data()``'s dict (loaded if None).
    progress: show a tqdm bar.
  """
  if param_dtype not in PARAM_DTYPES:
    raise ValueError(f"param_dtype must be one of {PARAM_DTYPES}, got {param_dtype!r}.")
  tx = make_optimizer(  # validates variant, state and rounding
    variant,
    state,
    learning_rate=learning_rate,
    steps=steps,
    rounding=rounding,
    seed=seed,
  )
  data = load_data() if data is None else data
  config = {
    "variant": variant,
    "state": state,
    "param_dtype": param_dtype,
    "rounding": rounding,
    "learning_rate": VARIANTS[variant][1] if learning_rate is None else learning_rate,
    "steps": steps,
    "seed": seed,
    "batch_size": batch_size,
    "context": context,
  }
  model = CharLM(
    layers=layers,
    d_model=d_model,
    heads=heads,
    context=context,
    param_dtype=jnp.dtype(param_dtype),
    rngs=nnx.Rngs(seed),
  )
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  held = {
    split: eval_windows(data[split], n_eval_windows, context)
    for split in ("train", "val")
  }
  history: dict[str, list[float]] = {"step": [], "train_loss": [], "val_loss": []}

  def record(step: int) -> None:
    history["step"].append(step)
    for split in ("train", "val"):
      history[f"{split}_loss"].append(evaluate(model, held[split]))

  start = time.perf_counter()
  record(0)
  recent: list[jax.Array] = []
  shown: dict[str, str] = {}
  with tqdm(total=steps, desc="train", disable=not progress) as bar:
    for step in range(1, steps + 1):
      seqs = batch(data["train"], seed, step, batch_size, context)
      recent.append(train_step(model, optimizer, seqs))
      evaluating = (eval_every and step % eval_every == 0) or step == steps
      if step % 20 == 0 or evaluating:  # a host sync every 20 steps, not each
        shown["loss"] = f"{np.mean(jax.device_get(recent)):.4f}"  # running mean
        recent = []
      if evaluating:
        record(step)
        shown["val_loss"] = f"{history['val_loss'][-1]:.4f}"
      bar.set_postfix(shown, refresh=False)
      bar.update()
  seconds = time.perf_counter() - start
  return TrainResult(
    model=model,
    optimizer=optimizer,
    history=history,
    train_loss=history["train_loss"][-1],
    val_loss=history["val_loss"][-1],
    seconds=seconds,
    config=config,
  )


def plot_history(history: dict[str, Any], path: pathlib.Path, title: str) -> None:
  """Writes the train/validation loss curves to ``path`` (PNG)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
  ax.plot(history["step"], history["train_loss"], "o-", label="train")
  ax.plot(history["step"], history["val_loss"], "s-", label="validation")
  ax.set_xlabel("step")
  ax.set_ylabel("cross-entropy (nats per byte)")
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)


def main(argv: Sequence[str] | argparse.Namespace | None = None) -> TrainResult:
  args = argv if isinstance(argv, argparse.Namespace) else parse_args(argv)
  data = load_data(args.max_bytes)
  result = train(
    steps=args.steps,
    seed=args.seed,
    learning_rate=args.lr,
    variant=args.variant,
    state=args.state,
    param_dtype=args.param_dtype,
    rounding=args.rounding,
    batch_size=args.batch_size,
    context=args.context,
    layers=args.layers,
    d_model=args.d_model,
    heads=args.heads,
    eval_every=args.eval_every,
    n_eval_windows=args.eval_windows,
    data=data,
  )
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(result.model, nnx.Param)))
  plot = args.out / PLOT_NAME
  c = result.config
  plot_history(
    result.history,
    plot,
    f"stdlib bytes, {c['variant']} RMSprop, {c['state']} state",
  )
  print(
    f"final train loss {result.train_loss:.4f}, validation loss "
    f"{result.val_loss:.4f} (nats per byte; {n_params / 1e6:.2f}M params, "
    f"{len(data['train']) / 1e6:.2f} MB train / {len(data['val']) / 1e6:.2f} MB "
    f"validation text; {c['variant']}, lr {c['learning_rate']:g}, {c['state']} "
    f"state, {c['param_dtype']} params, {c['rounding']} rounding, {args.steps} "
    f"steps, {result.seconds:.1f} s)"
  )
  print(f"loss curves: {plot}")
  return result


if __name__ == "__main__":
  main(_ARGS)
