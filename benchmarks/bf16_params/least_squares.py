"""bfloat16 parameters: round to nearest, Kahan summation, stochastic rounding.

Run: python -m benchmarks.bf16_params.least_squares [--steps 3000] [--out FILE]
(default: benchmarks/results/<machine>/bf16_params.md)

Least squares, loss 0.5 * mean((X w - y)^2), with the true weights drawn
uniformly in [1, 4) (where half a bfloat16 ulp is 2^-9 to 2^-7 relative:
3.9e-3 to 1.6e-2 absolute), correlated features (singular values of X spread
over 1..1/30) and a little label noise, started from the true weights plus
N(0, 0.3) noise. ``optax_rms.rmsprop(3e-4)``: its steps are about the
learning rate, 13x below half an ulp at 1. The loss and its gradient are
computed in float32 from the parameters (bfloat16 storage, float32 compute);
the gradient is cast to the parameters' dtype, as ``jax.grad`` of a
bfloat16 parameter returns it. Excess loss = loss(final params) - loss of the
float64 least-squares solution. Runs:

- float32: float32 parameters (the reference);
- nearest: bfloat16 parameters, ``optax.apply_updates`` rounding to nearest;
- kahan: bfloat16 parameters, ``optax_rms.kahan_summation(rmsprop(3e-4))``;
- stochastic: bfloat16 parameters, ``optax_rms.stochastic_rounding(...)``.

Targets (issue 16): Kahan within 1.25x and stochastic within 2.5x of
float32's excess loss, as means over the seeds. The numbers are
deterministic (CPU, fixed seeds); the script takes seconds.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_rms

from ..harness import machine_info, results_path

LR = 3e-4
TARGETS = {"kahan": 1.25, "stochastic": 2.5}


def problem(seed: int, dim: int, init_noise: float = 0.3):
  """(X, y, w0, excess_loss, w_opt) for one seed, in float32 / float64."""
  rng = np.random.default_rng(seed)
  n = 4 * dim
  u, _ = np.linalg.qr(rng.normal(size=(n, dim)))
  v, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  x = (u * np.geomspace(1.0, 1 / 30, dim)) @ v.T * np.sqrt(n)
  w_true = rng.uniform(1.0, 4.0, dim)
  y = x @ w_true + 0.01 * rng.normal(size=n)
  w_opt = np.linalg.lstsq(x, y, rcond=None)[0]
  best = 0.5 * np.mean((x @ w_opt - y) ** 2)
  w0 = np.clip(w_true + init_noise * rng.normal(size=dim), 1.0, 3.99)
  x32, y32 = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)

  def excess(w):
    w = np.asarray(jnp.asarray(w).astype(jnp.float32), np.float64)
    return float(0.5 * np.mean((x @ w - y) ** 2) - best)

  w0 = jnp.asarray(w0, jnp.float32).astype(jnp.bfloat16)
  return x32, y32, w0, excess, w_opt


def _random_neighbour(w_opt, excess, seed: int) -> float:
  """Mean excess loss of the float64 optimum (as float32) rounded to
  bfloat16 stochastically, over NEIGHBOUR_DRAWS draws: where weights end that
  sit on either side of the optimum at random."""
  tx = optax_rms.stochastic_rounding(optax.identity(), seed=seed)
  target = jnp.asarray(w_opt, jnp.float32)
  start = target.astype(jnp.bfloat16)
  state, total = tx.init(start), 0.0
  for _ in range(NEIGHBOUR_DRAWS):
    updates, state = tx.update(target - start.astype(jnp.float32), state, start)
    total += excess(optax.apply_updates(start, updates))
  return total / NEIGHBOUR_DRAWS


def _lattice(x, w_opt, excess) -> tuple[float, float]:
  """(greedy, bound): the excess loss of bfloat16 weights found by a greedy
  search from the floor (move one weight by one bfloat16 step while that
  lowers the loss), and a lower bound on every bfloat16 weight vector's,
  0.5 * lambda_min(H) * sum_i dist(w_opt_i, bfloat16)^2 (H = X^T X / n)."""
  x = np.asarray(x, np.float64)
  hessian = x.T @ x / x.shape[0]
  bf16 = jnp.bfloat16

  def step(v: float, direction: float) -> float:
    b = np.array(v, np.float32).astype(bf16)
    return float(np.nextafter(b, np.array(direction * np.inf).astype(bf16)))

  w = np.asarray(jnp.asarray(w_opt, jnp.float32).astype(bf16), np.float64)
  quad = lambda w: 0.5 * (w - w_opt) @ hessian @ (w - w_opt)
  improved = True
  while improved:
    improved = False
    for i in range(w.size):
      for direction in (1.0, -1.0):
        trial = w.copy()
        trial[i] = step(w[i], direction)
        if quad(trial) < quad(w):
          w, improved = trial, True
  dist = np.abs(
    w_opt - np.asarray(jnp.asarray(w_opt, jnp.float32).astype(bf16), np.float64)
  )
  bound = 0.5 * np.linalg.eigvalsh(hessian)[0] * float(dist @ dist)
  return excess(jnp.asarray(w, jnp.float32)), bound


def _train(tx, w, x, y, steps: int):
  def loss(w):
    r = x @ w.astype(jnp.float32) - y
    return 0.5 * jnp.mean(r * r)

  def step(carry, _):
    w, state = carry
    g = jax.grad(loss)(w)
    updates, state = tx.update(g, state, w)
    return (optax.apply_updates(w, updates), state), None

  (w, state), _ = jax.lax.scan(step, (w, tx.init(w)), None, length=steps)
  return w, state


ROWS = (
  "initial",
  "floor",
  "random neighbour",
  "greedy lattice",
  "lower bound",
  "float32",
  "float32→bf16",
  "nearest",
  "kahan",
  "kahan p + c",
  "stochastic",
)
NEIGHBOUR_DRAWS = 16


def run(
  steps: int = 3000,
  seeds: Sequence[int] = (0, 1, 2, 3),
  dim: int = 64,
  init_noise: float = 0.3,
):
  """Excess losses per row of ROWS, one per seed. "floor": the float64
  optimum rounded to nearest bfloat16; "random neighbour": rounded
  stochastically instead (mean of NEIGHBOUR_DRAWS draws); "greedy lattice"
  and "lower bound": see _lattice; "float32→bf16":
  the float32 run's weights rounded at the end; "kahan p + c": the Kahan
  run's weights with their compensation added back, in float32."""
  out: dict[str, list[float]] = {k: [] for k in ROWS}
  for seed in seeds:
    x, y, w0, excess, w_opt = problem(seed, dim, init_noise)
    runs = {
      "float32": (optax_rms.rmsprop(LR), w0.astype(jnp.float32)),
      "nearest": (optax_rms.rmsprop(LR), w0),
      "kahan": (optax_rms.kahan_summation(optax_rms.rmsprop(LR)), w0),
      "stochastic": (
        optax_rms.stochastic_rounding(optax_rms.rmsprop(LR), seed=seed),
        w0,
      ),
    }
    out["initial"].append(excess(w0))
    out["floor"].append(excess(jnp.asarray(w_opt, jnp.float32).astype(jnp.bfloat16)))
    out["random neighbour"].append(_random_neighbour(w_opt, excess, seed))
    greedy, bound = _lattice(x, w_opt, excess)
    out["greedy lattice"].append(greedy)
    out["lower bound"].append(bound)
    for name, (tx, w) in runs.items():
      train = jax.jit(lambda w, x, y, tx=tx: _train(tx, w, x, y, steps))
      w, state = train(w, x, y)
      out[name].append(excess(w))
      if name == "float32":
        out["float32→bf16"].append(excess(w.astype(jnp.bfloat16)))
      if name == "kahan":  # the compensated weights, p + c, in float32
        c = state.compensation.astype(jnp.float32)
        out["kahan p + c"].append(excess(w.astype(jnp.float32) + c))
  return out


def report(out: dict[str, list[float]], steps: int, dim: int, init_noise: float) -> str:
  seeds = len(out["float32"])
  mean = {k: float(np.mean(v)) for k, v in out.items()}
  lines = [
    f"## Start at the optimum + N(0, {init_noise}^2)",
    "",
    "`python -m benchmarks.bf16_params.least_squares "
    f"--steps {steps} --init-noise {init_noise}` "
    f"(CPU, deterministic): least squares, {dim} weights "
    f"in [1, 4), `optax_rms.rmsprop({LR})`, {steps} steps, {seeds} seeds. "
    "Excess loss over the float64 least-squares optimum; ratio = mean excess "
    "loss / float32's.",
    "",
    "| run | " + " | ".join(f"seed {i}" for i in range(seeds)) + " | mean | ratio "
    "| target |",
    "|---|" + "---|" * seeds + "---|---|---|",
  ]
  for name in ROWS:
    ratio = mean[name] / mean["float32"]
    target = TARGETS.get(name)
    verdict = (
      f"<= {target}x: {'met' if ratio <= target else 'NOT met'}" if target else ""
    )
    cells = " | ".join(f"{v:.3e}" for v in out[name])
    lines.append(f"| {name} | {cells} | {mean[name]:.3e} | {ratio:.2f}x | {verdict} |")
  return "\n".join(lines) + "\n"


HEADER = """# bfloat16 parameters: nearest, Kahan, stochastic rounding

Generated by `python -m benchmarks.bf16_params.least_squares` (the problem is
described in its docstring). Rows: *initial* = excess loss at the start;
*floor* = the float64 optimum rounded to nearest bfloat16; *random neighbour*
= the optimum rounded stochastically to bfloat16 (mean over 16 draws); *greedy
lattice* = bfloat16 weights found by a greedy search from the floor (one
weight, one bfloat16 step at a time, while the loss falls); *lower bound* = a
bound below every bfloat16 weight vector's excess loss (the Hessian's smallest
eigenvalue times the optimum's squared distance to the bfloat16 grid, / 2; a
bound, not an excess loss of any weights); *float32* = float32 parameters;
*float32→bf16* = that run's weights rounded to bfloat16 at the end; *nearest*,
*kahan*, *stochastic* = bfloat16 parameters; *kahan p + c* = the Kahan run's
weights with their compensation added back (in float32).
"""


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.bf16_params.least_squares",
    description=__doc__.split("\n")[0],
  )
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--seeds", type=int, default=4)
  parser.add_argument(
    "--init-noise",
    type=float,
    action="append",
    default=None,
    help="std of the start's offset from the optimum (repeatable; default 0.3, 1.0)",
  )
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    help="default: benchmarks/results/<machine>/bf16_params.md",
  )
  args = parser.parse_args(argv)
  text = HEADER
  for init_noise in args.init_noise or (0.3, 1.0):
    out = run(args.steps, tuple(range(args.seeds)), args.dim, init_noise)
    text += "\n" + report(out, args.steps, args.dim, init_noise)
  print(text)
  (args.out or results_path(machine_info(), "bf16_params.md")).write_text(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
