"""Step-time benchmark: optax_rms.rmsprop vs optax.rmsprop vs torch.optim.RMSprop.

Run from the repository root (the full suite takes several minutes; --quick
about two on 2 busy cores):

  python -m benchmarks.step [--quick] [--out FILE]

It writes the Markdown report (default: benchmarks/results/<machine>/step.md,
--quick: printed) and the chart beside it (step.png, when matplotlib is
installed). --sections and --variants run a subset.
docs/performance_findings.md says what is measured, how, and why.

Sections (the full run gives each its own process; --quick runs in-process):
  roofline   STREAM-style copy and triad on a large float32 array (start and end)
  tree:*     one jitted, donated step per implementation, alternated in rounds
             (torch runs on the CPU when JAX does, on CUDA when JAX runs on a
             GPU and torch has CUDA, and is left out otherwise)
  states     optimizer-state bytes/param per state dtype, and their step time
  compile    lower + compile of the jitted step, caches cleared each time
  eager      tx.update without jit (notebook use), with a check against optax
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_rms

from .. import harness
from ..harness import frozen_heap

try:
  import torch
except ImportError:  # the torch rows then read "n/a"
  torch = None

FLATTENED = "optax.flatten(ours)"
PACKED = "pack_small(ours)"
PAIRED_TRIAD = "triad in place"
LR = 1e-3
DECAY = 0.9
EPS = 1e-8

VARIANTS: dict[str, dict[str, Any]] = {
  "plain": {},
  "centered": {"centered": True},
  "momentum": {"momentum": 0.9},
  "centered+momentum": {"centered": True, "momentum": 0.9},
}
# Every implementation a tree section may time, in the order the report lists
# them. "ours bf16 state" runs on the bfloat16 tree only: optax_rms with its
# default state dtype (the params'), so it moves the same bytes as optax.
IMPLS = ("ours", "ours bf16 state", "optax", "torch foreach", "torch single")

# State storage options of optax_rms timed and sized in the "states" section.
STATE_MODES: dict[str, dict[str, Any]] = {
  "float32": {},
  "bfloat16": {
    "nu_dtype": "bfloat16",
    "mu_dtype": "bfloat16",
    "momentum_dtype": "bfloat16",
  },
  "8bit nu": {"nu_quantization": "8bit"},
  "8bit nu + bf16 buffers": {
    "nu_quantization": "8bit",
    "mu_dtype": "bfloat16",
    "momentum_dtype": "bfloat16",
  },
}

# ---------------------------------------------------------------------------
# Scales: what "full", "quick" and "tiny" (the smoke test) run.


@dataclasses.dataclass(frozen=True)
class Scale:
  big_leaf: int  # elements of the one-big-leaf trees
  resnet_width: int  # 64 is ResNet-50
  resnet_classes: int
  small_leaves: int  # the many-small-leaves tree: leaves x elements
  small_size: int
  transformer: tuple[int, int, int, int]  # layers, d_model, vocab, context
  roofline_n: int  # elements of the roofline arrays
  rounds: int  # alternation rounds per comparison
  block_s: float  # seconds one implementation runs per round (k steps)
  max_k: int  # most steps per implementation per round
  compile_reps: int
  eager_rounds: int


SCALES = {
  "full": Scale(
    big_leaf=16 * 2**20,
    resnet_width=64,
    resnet_classes=1000,
    small_leaves=1000,
    small_size=512,
    transformer=(12, 768, 16384, 1024),
    roofline_n=32 * 2**20,
    rounds=5,
    block_s=0.25,
    max_k=20,
    compile_reps=3,
    eager_rounds=5,
  ),
  "quick": Scale(
    big_leaf=2 * 2**20,
    resnet_width=16,
    resnet_classes=1000,
    small_leaves=200,
    small_size=512,
    transformer=(2, 256, 4096, 256),
    roofline_n=4 * 2**20,
    rounds=3,
    block_s=0.05,
    max_k=5,
    compile_reps=1,
    eager_rounds=2,
  ),
  "tiny": Scale(
    big_leaf=4096,
    resnet_width=2,
    resnet_classes=10,
    small_leaves=10,
    small_size=64,
    transformer=(1, 32, 64, 16),
    roofline_n=65536,
    rounds=1,
    block_s=0.0,
    max_k=1,
    compile_reps=1,
    eager_rounds=1,
  ),
}

# ---------------------------------------------------------------------------
# Trees.


@dataclasses.dataclass(frozen=True)
class Tree:
  name: str
  description: str
  shapes: dict[str, tuple[int, ...]]  # "a/b/c" -> shape
  dtype: str = "float32"
  ours_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  # More optax_rms configurations to time on this tree: impl name -> kwargs.
  extra_ours: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
  # Also time optax.flatten(ours): state in one flat vector, so one kernel
  # updates every leaf's statistics (the recipe for many small leaves).
  flatten_row: bool = False
  # Also time optax_rms.pack_small(ours): only the small leaves' state packed,
  # in flat vectors of a bounded number of leaves (the library's own recipe).
  packed_row: bool = False
  # Also time the in-place triad on float32 arrays of n_params elements in the
  # same rounds (PAIRED_TRIAD): a ceiling measured at the same moments as the
  # steps, where the host's bandwidth drifts between the roofline's runs.
  paired_triad: bool = False

  @property
  def n_params(self) -> int:
    return sum(int(np.prod(s)) for s in self.shapes.values())


def resnet50_shapes(
  width: int = 64, classes: int = 1000, conv_layout: str = "OIHW"
) -> dict[str, tuple]:
  """ResNet-50's trainable parameters (He et al. 2016): 161 leaves, 25.6M.

  conv_layout: "OIHW", PyTorch's conv weight (out, in, kh, kw); "HWIO", Flax's
  (nnx.Conv and linen.Conv kernels are (kh, kw, in, out)). The same elements:
  the optimizers' math does not care, but XLA:CPU's loops do (the minor
  dimensions 3x3 and 1x1 of OIHW vectorize poorly; docs/performance_findings.md).
  """
  if conv_layout not in ("OIHW", "HWIO"):
    raise ValueError(f"conv_layout must be 'OIHW' or 'HWIO', got {conv_layout!r}")
  shapes: dict[str, tuple] = {}

  def conv_bn(prefix: str, cout: int, cin: int, k: int) -> None:
    kernel = (cout, cin, k, k) if conv_layout == "OIHW" else (k, k, cin, cout)
    shapes[f"{prefix}/conv/kernel"] = kernel
    shapes[f"{prefix}/bn/scale"] = (cout,)
    shapes[f"{prefix}/bn/bias"] = (cout,)

  conv_bn("stem", width, 3, 7)
  cin = width
  for stage, blocks in enumerate((3, 4, 6, 3)):
    w = width * 2**stage
    for b in range(blocks):
      p = f"stage{stage + 1}/block{b}"
      conv_bn(f"{p}/conv1", w, cin, 1)
      conv_bn(f"{p}/conv2", w, w, 3)
      conv_bn(f"{p}/conv3", 4 * w, w, 1)
      if b == 0:
        conv_bn(f"{p}/downsample", 4 * w, cin, 1)
      cin = 4 * w
  shapes["head/kernel"] = (cin, classes)
  shapes["head/bias"] = (classes,)
  return shapes


def transformer_shapes(
  layers: int, d: int, vocab: int, context: int
) -> dict[str, tuple]:
  """A GPT-2-like decoder (tied output head): 12 leaves per layer."""
  shapes: dict[str, tuple] = {
    "embed/token": (vocab, d),
    "embed/position": (context, d),
  }
  for i in range(layers):
    p = f"layer{i:02d}"
    for ln in ("ln1", "ln2"):
      shapes[f"{p}/{ln}/scale"] = (d,)
      shapes[f"{p}/{ln}/bias"] = (d,)
    for name, (fan_in, fan_out) in {
      "attn/qkv": (d, 3 * d),
      "attn/out": (d, d),
      "mlp/fc": (d, 4 * d),
      "mlp/proj": (4 * d, d),
    }.items():
      shapes[f"{p}/{name}/kernel"] = (fan_in, fan_out)
      shapes[f"{p}/{name}/bias"] = (fan_out,)
  shapes["final_ln/scale"] = (d,)
  shapes["final_ln/bias"] = (d,)
  return shapes


def trees(scale: Scale) -> dict[str, Tree]:
  layers, d, vocab, ctx = scale.transformer
  f32_state = dict.fromkeys(("nu_dtype", "mu_dtype", "momentum_dtype"), "float32")
  out = [
    Tree(
      "one_big_leaf",
      f"one float32 leaf of {scale.big_leaf:,} elements",
      {"w": (scale.big_leaf,)},
      paired_triad=True,
    ),
    Tree(
      "resnet50_like",
      f"ResNet-50 shapes (width {scale.resnet_width}) with PyTorch's conv "
      f"layout (out,in,kh,kw), batchnorm vectors, a "
      f"{8 * 4 * scale.resnet_width}x{scale.resnet_classes} dense",
      resnet50_shapes(scale.resnet_width, scale.resnet_classes),
      packed_row=True,
    ),
    Tree(
      "resnet50_flax",
      "the same ResNet-50 in Flax's conv layout (kh,kw,in,out), as "
      "nnx.Conv and linen.Conv create it: the same elements, other shapes",
      resnet50_shapes(scale.resnet_width, scale.resnet_classes, "HWIO"),
      packed_row=True,
    ),
    Tree(
      "many_small",
      f"{scale.small_leaves} float32 leaves of {scale.small_size} elements",
      {f"p{i:04d}": (scale.small_size,) for i in range(scale.small_leaves)},
      flatten_row=True,
      packed_row=True,
    ),
    Tree(
      "transformer_like",
      f"GPT-2-like: {layers} layers, d={d}, 4x MLP, {vocab}x{d} token embedding "
      f"(vocab cut from 50257 to keep the run's memory and time down), "
      f"{ctx}x{d} positions",
      transformer_shapes(layers, d, vocab, ctx),
      packed_row=True,
    ),
    Tree(
      "bf16_big_leaf",
      f"one bfloat16 leaf of {scale.big_leaf:,} elements; ours keeps float32 "
      "state (nu/mu/momentum_dtype='float32'), optax and torch keep bfloat16 "
      "state (neither has a state-dtype option), so ours moves 4 more bytes "
      "per param per state array; `ours bf16 state` is optax_rms with its "
      "default state dtype (the params'), the like-for-like comparison",
      {"w": (scale.big_leaf,)},
      dtype="bfloat16",
      ours_kwargs=f32_state,
      extra_ours={"ours bf16 state": {}},
    ),
  ]
  return {t.name: t for t in out}


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
  """{"a/b": x} -> {"a": {"b": x}}: a model-like nested pytree."""
  root: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = root
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return root


def _random_arrays(tree: Tree, seed: int | None = None) -> tuple[dict, dict]:
  """Random (never zero) float32 params and grads, as flat numpy dicts; by
  default seeded by the tree's name, so every script times the same arrays."""
  rng = np.random.default_rng(zlib.crc32(tree.name.encode()) if seed is None else seed)
  params, grads = {}, {}
  for path, shape in tree.shapes.items():
    params[path] = 0.02 * rng.standard_normal(shape, dtype=np.float32)
    grads[path] = 1e-3 * rng.standard_normal(shape, dtype=np.float32)
  return params, grads


def _nbytes(tree: Any) -> int:
  """Bytes of the non-scalar arrays of a pytree (step counters excluded)."""
  return sum(x.nbytes for x in jax.tree.leaves(tree) if np.ndim(x) > 0)


# ---------------------------------------------------------------------------
# Timing.


def default_min_sample_s() -> float:
  """Shortest timed sample: 0 on the CPU (every step timed on its own), 2 ms on
  an accelerator.

  On a GPU the step is queued asynchronously: timing one step from its call to
  block_until_ready adds the launch and synchronisation latency (tens of
  microseconds) to a 0.1 ms step. There each sample is the mean of m steps
  queued back to back with one sync at the end, m chosen so the sample lasts
  about this long, as a training loop runs them.
  """
  return 0.0 if jax.devices()[0].platform == "cpu" else 2e-3


def alternate(
  impls: dict[str, Callable[..., None]],
  scale: Scale,
  min_sample_s: float | None = None,
) -> tuple[dict[str, list[float]], dict[str, int]]:
  """Per-step seconds of each implementation, run in alternating blocks, and
  the steps averaged in each sample.

  Each impl is called as impl(block): block=False may return before its work
  is done (queued on an accelerator); block=True waits for it.

  Each implementation first runs once untimed (compilation, first touch of
  memory, torch's lazy state), then twice 4 steps queued back to back, the
  last waited for: the faster estimates its step time (one stalled run must
  not cut its sample count; queued, so that a waited step's sync latency does
  not shrink m on an accelerator). Then, for
  `scale.rounds` rounds with the order rotated each round, each runs one
  untimed step (it wakes its thread pool and caches after the previous
  implementation) and then k consecutive timed samples (k ~ block_s / its
  sample time, 1 <= k <= max_k). A sample is m steps, the last one waited for,
  divided by m: m = 1 on the CPU, see default_min_sample_s for accelerators.
  Background load therefore lands on all implementations alike; the best
  sample is the least-disturbed one.
  """
  if min_sample_s is None:
    min_sample_s = default_min_sample_s()
  names = list(impls)
  estimate = {}
  for name in names:
    impls[name](True)
    runs = []
    for _ in range(2):
      t0 = time.perf_counter()
      for i in range(4):
        impls[name](i == 3)
      runs.append((time.perf_counter() - t0) / 4)
    estimate[name] = min(runs)
  per_sample = {
    name: max(1, min(100, math.ceil(min_sample_s / max(estimate[name], 1e-9))))
    for name in names
  }
  samples: dict[str, list[float]] = {name: [] for name in names}
  for r in range(scale.rounds):
    shift = r % len(names)
    gc.collect()
    gc.disable()  # no collector pause inside a timed step
    try:
      for name in names[shift:] + names[:shift]:
        m = per_sample[name]
        k = round(scale.block_s / max(estimate[name] * m, 1e-6))
        impls[name](True)
        for _ in range(max(1, min(scale.max_k, k))):
          t0 = time.perf_counter()
          for i in range(m):
            impls[name](i == m - 1)
          samples[name].append((time.perf_counter() - t0) / m)
    finally:
      gc.enable()
  return samples, per_sample


def _stats(samples: list[float], steps_per_sample: int = 1) -> dict[str, Any]:
  return {
    "best_s": min(samples),
    "median_s": statistics.median(samples),
    "n": len(samples),
    "steps_per_sample": steps_per_sample,
  }


def make_step(tx: optax.GradientTransformation) -> Callable:
  """The timed step: one update applied to the params."""

  def step(params, grads, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2}
_DTYPE_BYTES |= {"s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_DTYPE_BYTES |= {"c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
# ENTRY instructions that move no data of their own.
_NO_TRAFFIC = {"parameter", "tuple", "get-tuple-element", "bitcast", "constant"}


def _shape_bytes(shape: str) -> int:
  return sum(
    _DTYPE_BYTES[dt] * math.prod(int(d) for d in dims.split(",") if d)
    for dt, dims in _SHAPE.findall(shape)
  )


def _closing_paren(text: str) -> int:
  """Index of the ")" that closes the "(" text starts with."""
  depth = 0
  for i, ch in enumerate(text):
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0:
      return i
  return len(text) - 1


def hlo_traffic(hlo_text: str) -> int:
  """Bytes the compiled program moves if each ENTRY instruction (a fusion, a
  copy, ...) reads each operand once and writes its result once.

  Above the bytes model when XLA splits the step into several passes over
  memory (intermediates written and read back, an operand read twice).
  """
  entry = hlo_text.split("\nENTRY ", 1)[1].split("\n}", 1)[0].splitlines()[1:]
  sizes: dict[str, int] = {}
  total = 0
  for line in entry:
    if " = " not in line:
      continue
    lhs, rhs = line.split(" = ", 1)
    name = lhs.split()[-1].lstrip("%")
    if rhs.startswith("("):  # a tuple shape: up to its closing parenthesis
      end = _closing_paren(rhs)
      shape, rest = rhs[: end + 1], rhs[end + 1 :].lstrip()
    else:
      shape, _, rest = rhs.partition(" ")
    op, _, args = rest.partition("(")
    sizes[name] = _shape_bytes(shape)
    if op in _NO_TRAFFIC:
      continue
    args = args[: _closing_paren("(" + args)]  # the operand list
    operands = set(re.findall(r"%([\w.\-]+)", args))  # each read once
    total += sizes[name] + sum(sizes.get(a, 0) for a in operands)
  return total


def hlo_ops(hlo_text: str) -> int:
  """Top-level operations of the compiled program that do work: ENTRY
  instructions other than parameters, tuples, bitcasts and constants. Each
  is one kernel launch on a GPU (a fusion, a copy, a concatenation) and one
  loop or thunk on the CPU, so per-leaf costs show up here."""
  entry = hlo_text.split("\nENTRY ", 1)[1].split("\n}", 1)[0].splitlines()[1:]
  ops = 0
  for line in entry:
    if " = " not in line:
      continue
    rhs = line.split(" = ", 1)[1]
    if rhs.startswith("("):  # a tuple shape: up to its closing parenthesis
      rest = rhs[_closing_paren(rhs) + 1 :].lstrip()
    else:
      rest = rhs.partition(" ")[2]
    ops += rest.partition("(")[0] not in _NO_TRAFFIC
  return ops


def jax_runner(
  tx: optax.GradientTransformation, params: Any, grads: Any, hlo_model: bool = True
) -> tuple[Callable[..., None], dict[str, int]]:
  """A step, run(block=True) (params and state donated, updated in place; see
  alternate for block), and its bytes: "bytes", the fewest it must move (read
  params, grads, state; write params, state), "hlo_bytes", what its
  compiled program moves (hlo_traffic; left out with hlo_model=False), and
  "hlo_ops", its top-level operations (hlo_ops)."""
  state = tx.init(params)
  step = jax.jit(make_step(tx), donate_argnums=(0, 2))
  # Compiled once here; the jitted calls below reuse this executable.
  hlo = step.lower(params, grads, state).compile().as_text()
  box = [params, state]

  def run(block: bool = True) -> None:
    box[0], box[1] = step(box[0], grads, box[1])
    if block:
      jax.block_until_ready(box)

  out = {"bytes": 2 * _nbytes(params) + _nbytes(grads) + 2 * _nbytes(state)}
  try:
    out["hlo_ops"] = hlo_ops(hlo)
  except (IndexError, ValueError) as e:  # another backend's dialect
    print(f"hlo_ops: could not read the compiled HLO ({e!r})", file=sys.stderr)
  if hlo_model:
    try:
      out["hlo_bytes"] = hlo_traffic(hlo)
    except (IndexError, KeyError, ValueError) as e:  # another backend's dialect
      print(f"hlo_traffic: could not read the compiled HLO ({e!r})", file=sys.stderr)
  return run, out


def torch_device() -> tuple[str | None, str]:
  """Where the torch rows run, and why: beside JAX, or not at all.

  torch runs on the CPU when JAX does, and on CUDA when JAX runs on a GPU and
  this torch has CUDA. Otherwise (JAX on a GPU, a CPU-only torch) the torch
  rows are left out: CPU torch against GPU JAX would compare devices, not
  optimizers.
  """
  if torch is None:
    return None, "torch is not installed"
  platform_ = jax.devices()[0].platform
  if platform_ == "cpu":
    return "cpu", f"CPU, {torch.get_num_threads()} threads"
  if platform_ == "gpu" and torch.cuda.is_available():
    return "cuda", f"CUDA ({torch.cuda.get_device_name(0)})"
  return None, (
    f"left out: JAX runs on {platform_} and this torch "
    f"({torch.__version__}) has no CUDA"
  )


def torch_runners(
  np_params: list[np.ndarray],
  np_grads: list[np.ndarray],
  dtype: str,
  variant: dict[str, Any],
  device: str,
) -> tuple[dict[str, Callable[..., None]], Callable[[], dict[str, dict[str, int]]]]:
  """torch.optim.RMSprop steps, foreach=True and False, each on its own fresh
  copy of the params (the read-only grads are shared), and their bytes."""
  kw = {
    "lr": LR,
    "alpha": DECAY,
    "eps": EPS,
    "centered": variant.get("centered", False),
    "momentum": variant.get("momentum", 0.0),
  }
  tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]

  def tensor(x: np.ndarray) -> Any:
    return torch.from_numpy(x).to(device=device, dtype=tdtype, copy=True)

  grads = [tensor(g) for g in np_grads]
  opts = {}
  for name, foreach in (("torch foreach", True), ("torch single", False)):
    params = [tensor(p) for p in np_params]
    for t, g in zip(params, grads, strict=True):
      t.grad = g
    opts[name] = torch.optim.RMSprop(params, foreach=foreach, **kw)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def runner(opt: Any) -> Callable[..., None]:
    def run(block: bool = True) -> None:
      opt.step()
      if block:
        sync()

    return run

  def nbytes() -> dict[str, dict[str, int]]:  # after a step: state is lazy
    def size(t):
      return t.numel() * t.element_size()

    out = {}
    for name, opt in opts.items():
      params = opt.param_groups[0]["params"]
      state = sum(
        size(v)
        for s in opt.state.values()
        for v in s.values()
        if torch.is_tensor(v) and v.dim() > 0
      )
      out[name] = {
        "bytes": 2 * sum(size(t) for t in params)
        + sum(size(t.grad) for t in params)
        + 2 * state
      }
    return out

  return {name: runner(opt) for name, opt in opts.items()}, nbytes


# ---------------------------------------------------------------------------
# Sections. Each returns JSON-able data.


def donating(kernel: Callable, out: jax.Array, *args: Any) -> Callable[..., None]:
  """kernel(out, *args) run again and again, each result donated to the next;
  run(block) as alternate calls it."""
  box = [out]

  def run(block: bool = True) -> None:
    box[0] = kernel(box[0], *args)
    if block:
      box[0].block_until_ready()

  return run


# STREAM's triad written over its first input, b = b + s*c: what a donated
# optimizer step does to its parameters, and the fairest ceiling for it.
triad_in_place = jax.jit(lambda b, c, s: b + s * c, donate_argnums=0)


def section_roofline(scale: Scale) -> dict[str, Any]:
  """Bandwidth ceilings: copy y = x, triad a = b + s*c, and the triad in place.

  All write into an existing (donated) buffer, as STREAM does: a fresh output
  buffer would time the kernel's page faults (on this CPU a fresh 64 MB
  output costs ~5x the copy itself). Bytes counted as STREAM counts them
  (each array read or written once, no write-allocate traffic). The in-place
  triad b = b + s*c writes over what it reads, as the donated optimizer step
  does, so it pays no write-allocate either and is the fairest ceiling.
  """
  n = scale.roofline_n
  rng = np.random.default_rng(1)
  x, b, c = (jnp.asarray(rng.standard_normal(n, dtype=np.float32)) for _ in "xbc")
  s = jnp.float32(1e-7)
  copy = jax.jit(lambda y, x: jnp.copy(x), donate_argnums=0, keep_unused=True)
  triad = jax.jit(lambda a, b, c, s: b + s * c, donate_argnums=0, keep_unused=True)

  impls = {
    "copy": donating(copy, x + 1, x),
    "triad": donating(triad, x + 2, x, c, s),
    "triad in place": donating(triad_in_place, b, c, s),
  }
  per_elem = {"copy": 8, "triad": 12, "triad in place": 12}
  samples, m = alternate(impls, scale)
  return {
    "n": n,
    "kernels": {
      name: {**_stats(samples[name], m[name]), "bytes": per_elem[name] * n}
      for name in impls
    },
  }


def section_tree(scale: Scale, tree: Tree, variants: list[str]) -> dict[str, Any]:
  """Jitted, donated step of each implementation on one tree, per variant.

  The gradient is the same every step. Each variant starts every
  implementation from the same params and a fresh state, so the few hundred
  steps timed stay far from where a constant gradient would drive the
  centered variance into cancellation (torch would then take sqrt of a
  negative number).
  """
  np_params, np_grads = _random_arrays(tree)
  dtype = jnp.dtype(tree.dtype)
  grads = _nest({k: jnp.asarray(v, dtype) for k, v in np_grads.items()})
  device, _ = torch_device()
  rows = {}
  for vname in variants:
    variant = VARIANTS[vname]
    impls: dict[str, Callable[..., None]] = {}
    nbytes: dict[str, dict[str, int]] = {}
    txs = {"ours": optax_rms.rmsprop(LR, DECAY, EPS, **variant, **tree.ours_kwargs)}
    for name, kwargs in tree.extra_ours.items():
      txs[name] = optax_rms.rmsprop(LR, DECAY, EPS, **variant, **kwargs)
    if tree.flatten_row:
      txs[FLATTENED] = optax.flatten(optax_rms.rmsprop(LR, DECAY, EPS, **variant))
    if tree.packed_row:
      txs[PACKED] = optax_rms.pack_small(optax_rms.rmsprop(LR, DECAY, EPS, **variant))
    txs["optax"] = optax.rmsprop(LR, DECAY, EPS, **variant)
    for name, tx in txs.items():
      params = _nest({k: jnp.asarray(v, dtype) for k, v in np_params.items()})
      # hlo_traffic's model (each fusion reads its operands whole) does not
      # hold where each leaf's fusion slices a flat update vector.
      impls[name], nbytes[name] = jax_runner(
        tx, params, grads, hlo_model=name not in (FLATTENED, PACKED)
      )
    torch_bytes = None
    if device is not None:
      runners, torch_bytes = torch_runners(
        [np_params[k] for k in tree.shapes],
        [np_grads[k] for k in tree.shapes],
        tree.dtype,
        variant,
        device,
      )
      impls.update(runners)
    if tree.paired_triad:
      rng = np.random.default_rng(2)
      b, c = (jnp.asarray(rng.standard_normal(tree.n_params, np.float32)) for _ in "bc")
      impls[PAIRED_TRIAD] = donating(triad_in_place, b, c, jnp.float32(1e-7))
      nbytes[PAIRED_TRIAD] = {"bytes": 12 * tree.n_params}
    samples, m = alternate(impls, scale)
    if torch_bytes is not None:
      nbytes.update(torch_bytes())
    rows[vname] = {
      name: {**_stats(samples[name], m[name]), **nbytes[name]} for name in impls
    }
    del impls, samples
    gc.collect()
  return {
    "name": tree.name,
    "description": tree.description,
    "n_params": tree.n_params,
    "n_leaves": len(tree.shapes),
    "dtype": tree.dtype,
    "variants": rows,
  }


def _ours_mode(variant: dict, mode: dict) -> optax.GradientTransformation | str:
  """optax_rms.rmsprop with a state mode, or "n/a" where the keyword is unknown."""
  try:
    return optax_rms.rmsprop(LR, DECAY, EPS, **variant, **mode)
  except TypeError as e:  # e.g. nu_quantization before it exists
    return f"n/a ({e})"


def section_states(scale: Scale, variants: list[str]) -> dict[str, Any]:
  """State bytes/param per variant and state mode, and the step time of each.

  Bytes/param: the non-scalar arrays of `tx.init(params)` (the int32 step
  counter left out) over the parameter count, on the ResNet-50-like tree.
  """
  ts = trees(scale)
  resnet = ts["resnet50_like"]
  np_params, _ = _random_arrays(resnet, seed=3)
  params = _nest({k: jnp.asarray(v) for k, v in np_params.items()})
  n = resnet.n_params
  memory: dict[str, dict[str, Any]] = {}
  for vname in variants:
    variant = VARIANTS[vname]
    row: dict[str, Any] = {}
    for mode_name, mode in STATE_MODES.items():
      tx = _ours_mode(variant, mode)
      if isinstance(tx, str):
        row[mode_name] = tx
        continue
      try:
        state = tx.init(params)
      except Exception as e:  # noqa: BLE001 - reported, not fatal
        row[mode_name] = f"error: {type(e).__name__}: {e}"
        continue
      row[mode_name] = _nbytes(state) / n
      del state
    state = optax.rmsprop(LR, DECAY, EPS, **variant).init(params)
    row["optax"] = _nbytes(state) / n
    del state
    memory[vname] = row
  del params
  gc.collect()

  big = ts["one_big_leaf"]
  np_params, np_grads = _random_arrays(big, seed=4)
  grads = {"w": jnp.asarray(np_grads["w"])}
  timing: dict[str, dict[str, Any]] = {}
  for vname in variants:
    variant = VARIANTS[vname]
    impls, nbytes, skipped = {}, {}, {}
    candidates = {f"ours {m}": _ours_mode(variant, kw) for m, kw in STATE_MODES.items()}
    candidates["optax float32"] = optax.rmsprop(LR, DECAY, EPS, **variant)
    for name, tx in candidates.items():
      if isinstance(tx, str):
        skipped[name] = tx
        continue
      params = {"w": jnp.asarray(np_params["w"])}
      try:
        impls[name], nbytes[name] = jax_runner(tx, params, grads)
        impls[name]()  # fail here, not inside the timing loop
      except Exception as e:  # noqa: BLE001 - reported, not fatal
        impls.pop(name, None)
        skipped[name] = f"error: {type(e).__name__}: {e}"
    samples, m = alternate(impls, scale)
    timing[vname] = {
      name: {**_stats(samples[name], m[name]), **nbytes[name]} for name in impls
    }
    timing[vname].update(skipped)
    del impls, samples
    gc.collect()
  return {
    "memory_tree": resnet.name,
    "memory_n_params": n,
    "memory": memory,
    "timing_tree": big.description,
    "timing_n_params": big.n_params,
    "timing": timing,
  }


def _hlo_counts(hlo_text: str) -> dict[str, int]:
  """Instructions and fusions in the ENTRY computation of compiled HLO."""
  entry = hlo_text.split("\nENTRY ", 1)[1].split("\n}", 1)[0].splitlines()[1:]
  ops = [line for line in entry if " = " in line]
  return {
    "entry_instructions": len(ops),
    "entry_fusions": sum(" fusion(" in line for line in ops),
    "fused_computations": hlo_text.count("\n%fused_computation")
    + hlo_text.count("\nfused_computation"),
  }


def section_compile(scale: Scale, variants: list[str]) -> dict[str, Any]:
  """Trace + lower, and XLA compile, of the jitted step, caches cleared each time."""
  tree = trees(scale)["many_small"]
  sds = jax.ShapeDtypeStruct
  params = _nest({k: sds(s, jnp.float32) for k, s in tree.shapes.items()})
  out: dict[str, Any] = {"tree": tree.description}
  for vname in variants:
    variant = VARIANTS[vname]
    txs = {
      "ours": optax_rms.rmsprop(LR, DECAY, EPS, **variant),
      "optax": optax.rmsprop(LR, DECAY, EPS, **variant),
      PACKED: optax_rms.pack_small(optax_rms.rmsprop(LR, DECAY, EPS, **variant)),
      FLATTENED: optax.flatten(optax_rms.rmsprop(LR, DECAY, EPS, **variant)),
    }
    times: dict[str, dict[str, list[float]]] = {
      name: {"lower": [], "compile": [], "total": []} for name in txs
    }
    hlo = {}
    for rep in range(scale.compile_reps):
      order = list(txs) if rep % 2 == 0 else list(txs)[::-1]
      for name in order:
        tx = txs[name]
        state = jax.eval_shape(tx.init, params)
        jax.clear_caches()
        gc.collect()
        t0 = time.perf_counter()
        lowered = jax.jit(make_step(tx), donate_argnums=(0, 2)).lower(
          params, params, state
        )
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        times[name]["lower"].append(t1 - t0)
        times[name]["compile"].append(t2 - t1)
        times[name]["total"].append(t2 - t0)
        hlo[name] = {
          "stablehlo_ops": sum(" = " in ln for ln in lowered.as_text().splitlines()),
          **_hlo_counts(compiled.as_text()),
        }
    out[vname] = {
      name: {
        **{f"{k}_best_s": min(v) for k, v in times[name].items()},
        "total_median_s": statistics.median(times[name]["total"]),
        "n": scale.compile_reps,
        **hlo[name],
      }
      for name in txs
    }
  jax.clear_caches()
  return out


def _agreement(a: Any, b: Any) -> tuple[float, float]:
  """Largest per-leaf max|a-b| / max|b|, and the fraction of equal elements.

  Normwise per leaf, not elementwise: params after a step and momentum
  buffers under sign-changing gradients are differences of nearby numbers,
  where one ulp of the terms is a large relative error of the result.
  """
  worst, equal, total = 0.0, 0, 0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)))
    equal, total = equal + int(np.sum(x == y)), total + x.size
  return worst, equal / total


def section_eager(scale: Scale, variants: list[str]) -> dict[str, Any]:
  """tx.update called without jit (notebook use), and its agreement with optax."""
  tree = trees(scale)["many_small"]
  np_params, np_grads = _random_arrays(tree, seed=5)
  params = _nest({k: jnp.asarray(v) for k, v in np_params.items()})
  grads = _nest({k: jnp.asarray(v) for k, v in np_grads.items()})
  eager_scale = dataclasses.replace(scale, rounds=scale.eager_rounds)
  out: dict[str, Any] = {"tree": tree.description}
  for vname in variants:
    variant = VARIANTS[vname]
    txs = {
      "ours": optax_rms.rmsprop(LR, DECAY, EPS, **variant),
      "optax": optax.rmsprop(LR, DECAY, EPS, **variant),
    }
    # Agreement: three chained eager steps, three different gradients.
    finals = {}
    for name, tx in txs.items():
      p, s = params, tx.init(params)
      for k in range(3):
        g = jax.tree.map(
          lambda x, k=k: x * (1.0 + 0.5 * k) * jnp.cos(x * 1e3 * k), grads
        )
        u, s = tx.update(g, s, p)
        p = optax.apply_updates(p, u)
      finals[name] = (u, p)
    rel, equal = _agreement(finals["ours"], finals["optax"])
    impls = {}
    for name, tx in txs.items():
      state = tx.init(params)

      def run(block=True, tx=tx, state=state):
        del block  # always waited for: a notebook sees the latency
        jax.block_until_ready(tx.update(grads, state, params))

      impls[name] = run
    # One call per sample: the eager latency is what a notebook user waits.
    samples, _ = alternate(impls, eager_scale, min_sample_s=0.0)
    out[vname] = {
      **{name: _stats(samples[name]) for name in impls},
      "max_rel_diff": rel,
      "equal_fraction": equal,
    }
  return out


# ---------------------------------------------------------------------------
# Running the sections, in-process or one process each.


def section_names() -> list[str]:
  tree_names = list(trees(SCALES["tiny"]))
  return (
    ["roofline"] + [f"tree:{t}" for t in tree_names] + ["states", "compile", "eager"]
  )


def run_section(
  name: str, scale_name: str, variants: list[str], compile_reps: int | None = None
) -> Any:
  scale = SCALES[scale_name]
  if compile_reps is not None:
    scale = dataclasses.replace(scale, compile_reps=compile_reps)
  if name == "machine":  # not a section: the parent of isolated runs asks a child
    return machine_info()
  # The sections collect between rows and before compiles; frozen, the heap
  # alive now is not scanned by each collection again.
  with frozen_heap():
    return _section(name, scale, variants)


def _section(name: str, scale: Scale, variants: list[str]) -> Any:
  if name == "roofline":
    return section_roofline(scale)
  if name.startswith("tree:"):
    return section_tree(scale, trees(scale)[name[5:]], variants)
  if name == "states":
    return section_states(scale, variants)
  if name == "compile":
    return section_compile(scale, [v for v in variants if v in COMPILE_VARIANTS])
  if name == "eager":
    return section_eager(scale, [v for v in variants if v in COMPILE_VARIANTS])
  raise ValueError(f"unknown section {name!r}")


# The compile and eager sections time these variants only (of those asked for).
COMPILE_VARIANTS = ("plain", "centered+momentum")


def machine_info() -> dict[str, Any]:
  """harness.machine_info() and where the torch rows run."""
  return harness.machine_info() | {
    "torch": torch.__version__ if torch is not None else "not installed",
    "torch_threads": torch.get_num_threads() if torch is not None else None,
    "torch_device": torch_device()[1],
  }


def run_suite(
  scale_name: str = "quick",
  *,
  isolate: bool = False,
  variants: list[str] | None = None,
  sections: list[str] | None = None,
  compile_reps: int | None = None,
  log: Callable[[str], None] = print,
  after_section: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
  """Runs the sections (roofline twice: first and last) and returns all data.

  isolate: each section in its own process (a fresh heap and JAX runtime; a
  section that fails is recorded as {"error": ...} and the run goes on). The
  parent then never starts a JAX backend, which on a GPU would hold most of
  its memory while the children run.
  after_section: called with the results so far after each section (to save
  them: a run cut short keeps what it measured).
  compile_reps: compilations per implementation in the compile section (default:
  the scale's), fewer where device time is short.
  """
  variants = list(variants or VARIANTS)
  sections = list(sections or section_names())
  plan = list(sections)
  if "roofline" in plan:  # again at the end: the ceiling under the same load
    plan.append("roofline")
  t_start = time.perf_counter()
  results: dict[str, Any] = {
    "scale": scale_name,
    "variants": variants,
    "machine": _run_child("machine", scale_name, variants)
    if isolate
    else machine_info(),
    "load_start": harness.load(),
    "sections": {},
  }
  for name in plan:
    t0 = time.perf_counter()
    if isolate:
      data = _run_child(name, scale_name, variants, compile_reps)
    else:
      data = run_section(name, scale_name, variants, compile_reps)
    if name == "roofline" and "roofline" in results["sections"]:
      results["sections"]["roofline_end"] = data
    else:
      results["sections"][name] = data
    log(f"  {name:24s} {time.perf_counter() - t0:6.1f} s   load {harness.load()}")
    results["load_end"] = harness.load()
    results["runtime_s"] = time.perf_counter() - t_start
    if after_section is not None:
      after_section(results)
  return results


def _run_child(
  name: str, scale_name: str, variants: list[str], compile_reps: int | None = None
) -> Any:
  """run_section in a new process; {"error": ...} if that process fails."""
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / "out.json"
    cmd = [sys.executable, "-m", "benchmarks.step", "--child", name]
    cmd += ["--scale", scale_name]
    cmd += ["--variants", ",".join(variants), "--child-out", str(path)]
    if compile_reps is not None:
      cmd += ["--compile-reps", str(compile_reps)]
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, cwd=harness.ROOT)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0 or not path.exists():
      tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
      if name == "machine":
        raise RuntimeError(f"machine info failed: {tail[0]}")
      return {"error": f"exit status {proc.returncode}: {tail[0][:300]}"}
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.step", description=__doc__.splitlines()[0]
  )
  parser.add_argument("--quick", action="store_true", help="small trees, ~2 min")
  parser.add_argument(
    "--out",
    help="write the Markdown report here, and the chart beside it (default: "
    "benchmarks/results/<machine>/step.md for the full run; --quick prints it)",
  )
  parser.add_argument("--png", help="chart path (default: --out with .png)")
  parser.add_argument("--json", help="also write the raw measurements here")
  parser.add_argument(
    "--isolate",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="one process per section (default: on for the full run, off for --quick)",
  )
  parser.add_argument(
    "--sections", help="comma-separated subset of: " + ",".join(section_names())
  )
  parser.add_argument(
    "--variants", help="comma-separated subset of " + ",".join(VARIANTS)
  )
  parser.add_argument(
    "--compile-reps",
    type=int,
    help="compilations per implementation in the compile section (full: 3)",
  )
  parser.add_argument("--scale", help=argparse.SUPPRESS)
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--child-out", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  scale_name = args.scale or ("quick" if args.quick else "full")
  variants = args.variants.split(",") if args.variants else list(VARIANTS)
  sections = args.sections.split(",") if args.sections else None
  if scale_name not in SCALES:
    parser.error(f"unknown scale {scale_name!r}")
  if args.compile_reps is not None and args.compile_reps < 1:
    parser.error("--compile-reps must be at least 1")
  if unknown := [v for v in variants if v not in VARIANTS]:
    parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
  if unknown := [x for x in sections or () if x not in section_names()]:
    parser.error(f"unknown sections {unknown}; choose from {section_names()}")

  if args.child:  # one section, in its own process
    data = run_section(args.child, scale_name, variants, args.compile_reps)
    pathlib.Path(args.child_out).write_text(json.dumps(data))
    return

  from . import report  # matplotlib, for the chart, only where a report is made

  for path in (args.out, args.png, args.json):  # fail now, not after the run
    if path:
      pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  isolate = args.isolate if args.isolate is not None else scale_name == "full"
  print(
    f"benchmarks.step: scale={scale_name}, isolate={isolate}, "
    f"{len(sections or section_names())} sections, variants {','.join(variants)}"
  )

  def save(results: dict[str, Any]) -> None:
    if args.json:
      pathlib.Path(args.json).write_text(json.dumps(results, indent=1))

  results = run_suite(
    scale_name,
    isolate=isolate,
    variants=variants,
    sections=sections,
    compile_reps=args.compile_reps,
    after_section=save,
  )
  print(f"total {results['runtime_s']:.0f} s")
  markdown = report.render(results, command=_command(args))
  out = args.out
  if out is None and scale_name == "full":
    out = harness.results_path(results["machine"], "step.md")
  if out:
    out = pathlib.Path(out)
    out.write_text(markdown)
    png = pathlib.Path(args.png) if args.png else out.with_suffix(".png")
    if report.chart(results, png):
      print(f"wrote {out} and {png}")
    else:
      print(f"wrote {out} (no chart: matplotlib is not installed)")
  else:
    print(markdown)
  print(report.target_summary(results))


def _command(args: argparse.Namespace) -> str:
  cmd = "python -m benchmarks.step"
  if args.quick:
    cmd += " --quick"
  for flag in ("sections", "variants", "compile_reps", "out"):
    if getattr(args, flag):
      cmd += f" --{flag.replace('_', '-')} {getattr(args, flag)}"
  return cmd
