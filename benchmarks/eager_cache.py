"""What baking Python-number hyperparameters into the compiled step costs and buys.

optax_rms's step is one jitted function; hyperparameters given as Python
numbers are compile-time constants in it (see `optax_rms._rmsprop._apply`),
so every distinct value (a learning-rate sweep in a notebook) compiles it
again. This script measures, on one small tree, in one process:

1. the cost: the first eager update of an optimizer with a new learning rate
   (a compile) against a repeated update (cached), and the number of compiled
   steps the cache holds after a sweep;
2. what the constants buy: for several variants, over 30 eager steps, how
   many update/state elements differ between the eager call and the same
   call inside the user's `jax.jit`, with the constants baked (as shipped)
   and with them passed as arguments instead (the alternative).

  python benchmarks/eager_cache.py > benchmarks/eager_cache.md
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

import optax_rms
from optax_rms import _jit_cache, _rmsprop

SHAPES = [(64, 32), (32,), (32, 10), (10,)]
VARIANTS = {
  "plain": {},
  "centered": dict(centered=True),
  "momentum": dict(momentum=0.9),
  "nesterov": dict(momentum=0.9, nesterov=True),
  "eps_outside+bias_correction": dict(eps_in_sqrt=False, bias_correction=True),
  "centered+momentum+decoupled_wd": dict(
    centered=True, momentum=0.9, weight_decay=1e-2, weight_decay_mode="decoupled"
  ),
  "pytorch_momentum": dict(momentum=0.9, lr_in_momentum=False),
}
STEPS = 30


def _params(dtype):
  keys = jax.random.split(jax.random.PRNGKey(0), len(SHAPES))
  return [
    jax.random.normal(k, s).astype(dtype) for k, s in zip(keys, SHAPES, strict=True)
  ]


def _grads(params, t):
  key = jax.random.fold_in(jax.random.PRNGKey(1), t)
  return [p + jax.random.normal(key, p.shape).astype(p.dtype) for p in params]


def _cache_entries() -> int:
  return _rmsprop._cache_size()


def cost() -> None:
  params = _params(jnp.float32)
  grads = _grads(params, 0)
  first, repeat = [], []
  before = _cache_entries()
  n = 40
  for i in range(n):
    tx = optax_rms.rmsprop(1e-3 * (1 + i), momentum=0.9)
    state = tx.init(params)
    t0 = time.perf_counter()
    u, state = tx.update(grads, state, params)
    jax.block_until_ready(u)
    first.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(10):
      u, state = tx.update(grads, state, params)
    jax.block_until_ready(u)
    repeat.append((time.perf_counter() - t0) / 10)
  after = _cache_entries()
  print("## Cost: a sweep of", n, "learning rates, eager, momentum=0.9\n")
  print("| measurement | median | max |")
  print("|---|---|---|")
  print(
    f"| first update of a new learning rate (compiles) | "
    f"{np.median(first) * 1e3:.1f} ms | {np.max(first) * 1e3:.1f} ms |"
  )
  print(
    f"| a repeated update (cached) | {np.median(repeat) * 1e6:.0f} us | "
    f"{np.max(repeat) * 1e6:.0f} us |"
  )
  print(
    f"\nCompiled steps held by optax_rms's cache: {before} before the sweep, "
    f"{after} after ({_jit_cache.CACHE_SIZE} at most).\n"
  )


def _run(tx, params, jit: bool, as_args: bool):
  """STEPS updates, eager or inside jax.jit; `as_args`: constants as args."""
  real = _rmsprop._step_function

  def patched(key):
    fn = real(key._replace(config=dataclasses.replace(key.config, constants=())))
    constants = dict(key.config.constants)
    return lambda u, s, p, hyper: fn(u, s, p, {**hyper, **constants})

  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params)
  outs = []
  try:
    if as_args:
      _rmsprop._step_function = patched
    for t in range(STEPS):
      g = _grads(params, t)
      u, state = update(g, state, params)
      outs.append((u, state))
      params = [p + d for p, d in zip(params, u, strict=True)]
  finally:
    _rmsprop._step_function = real
  return outs


def _differ(a, b) -> tuple[int, int, int | None]:
  """Differing elements, all elements, and the first step with a difference."""
  bad = total = 0
  first = None
  for t, (step_a, step_b) in enumerate(zip(a, b, strict=True)):
    la, lb = jax.tree.leaves(step_a), jax.tree.leaves(step_b)
    n = sum(
      int(np.sum(np.asarray(x, np.float64) != np.asarray(y, np.float64)))
      for x, y in zip(la, lb, strict=True)
    )
    if n and first is None:
      first = t + 1
    bad += n
    total += sum(int(np.size(x)) for x in la)
  return bad, total, first


def buys() -> None:
  print(f"## What the constants buy: eager vs the same update in jax.jit, {STEPS} "
        "steps\n")
  print("Elements (of all updates and states over the run) that differ between "
        "the eager call and the jitted one, and the first step where one does "
        "(gradients depend on the parameters, so a difference then spreads).\n")
  print("| variant | dtype | constants baked (shipped) | constants as arguments |")
  print("|---|---|---|---|")
  for name, kw in VARIANTS.items():
    for dtype in (jnp.float32, jnp.bfloat16):
      params = _params(dtype)
      tx = optax_rms.rmsprop(0.01, **kw)
      row = []
      for as_args in (False, True):
        eager = _run(tx, params, jit=False, as_args=as_args)
        jitted = _run(tx, params, jit=True, as_args=False)
        bad, total, first = _differ(eager, jitted)
        row.append(f"{bad} of {total}" + (f" (from step {first})" if first else ""))
      print(f"| {name} | {jnp.dtype(dtype).name} | {row[0]} | {row[1]} |")
  print()


def main() -> None:
  print("# optax_rms: the eager step's cache of compiled steps\n")
  print(
    f"Generated by `python benchmarks/eager_cache.py` (jax {jax.__version__}, "
    f"{jax.devices()[0].platform}). Times are wall-clock on a shared 2-core "
    "machine (other jobs running): read them as orders of magnitude.\n"
  )
  cost()
  buys()
  print("## Reading\n")
  print(
    "A new Python-number hyperparameter costs one compile of the step (the "
    "first row), held afterwards by optax_rms's cache, which keeps at most "
    "`optax_rms._jit_cache.CACHE_SIZE` configurations and drops the least "
    "recently used (with its compiled executable and the schedule objects in "
    "its key). Passing the numbers as arguments instead would avoid the "
    "recompiles but loses what the constants buy: in float32 the eager update "
    "then differs from the same update inside `jax.jit` from the first step "
    "on. One reason is plain arithmetic: with constants, `1 - decay` is "
    "computed in Python (float64, then rounded once), as optax computes "
    "it; as float32 arguments `1 - 0.9` is 0.100000024, not "
    "float32(0.1). (bfloat16 parameters here keep bfloat16 state whose "
    "rounding hides such differences.) So the constants stay baked and the "
    "cache is bounded. Sweeping many learning rates without recompiling: pass "
    "them as arrays (`learning_rate=jnp.asarray(lr)`) or through "
    "`optax.inject_hyperparams`, at the price of that bit-identity.\n"
  )


if __name__ == "__main__":
  main()
