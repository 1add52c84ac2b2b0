"""Compile time of the whole train step, 8-bit state against float32 state.

  python -m benchmarks.train_step.compile_ratio [--layers 2 --d 512] [--repeats 2]

Compiles the transformer LM's jitted train step (sections/train_step.py) for
each optimizer state mode of optax_rms.rmsprop, interleaved `--repeats` times
in one process (the best of each is kept: compile time is noisy on a shared
machine), and prints each mode's compile seconds (wall clock, and the
process's CPU seconds, less sensitive to other load), their ratios to float32
state's of the same variant, and XLA's peak (arguments + temporaries) in
bytes per parameter. issue 23 asks every 8-bit mode within 1.5x of float32.
"""

from __future__ import annotations

import argparse
import time

import jax

from .models import transformer
from .rows import VARIANT_MODES, VARIANTS, ours
from .sections._common import DONATE, harness
from .sections.train_step import _setup


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--d", type=int, default=512)
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--variants", default=",".join(VARIANTS))
  args = parser.parse_args()
  setup = _setup(transformer(args.layers, args.d, args.vocab, context=128, batch=1))
  rows = [
    (variant, mode)
    for variant in args.variants.split(",")
    for mode in VARIANT_MODES[variant]
    if mode != "bfloat16"
  ]
  best: dict[tuple[str, str], float] = {}
  cpu: dict[tuple[str, str], float] = {}
  peak: dict[tuple[str, str], float] = {}
  for _ in range(args.repeats):
    for row in rows:
      tx = ours(*row)
      state = jax.eval_shape(tx.init, setup.params)
      lowered = jax.jit(setup.step_for(tx), donate_argnums=DONATE).lower(
        setup.params, state, setup.carry, *setup.consts
      )
      t0, c0 = time.perf_counter(), time.process_time()
      compiled = lowered.compile()
      seconds = time.perf_counter() - t0
      best[row] = min(best.get(row, float("inf")), seconds)
      cpu[row] = min(cpu.get(row, float("inf")), time.process_time() - c0)
      peak[row] = harness.compiled_memory(compiled)["peak"] / setup.n_params
  print(f"{setup.description}: {setup.n_params} parameters, {jax.devices()[0]}")
  head = ("variant", "state", "compile s", "x float32", "CPU s", "x float32")
  print("{:18s} {:14s} {:>9s} {:>9s} {:>7s} {:>9s} peak B/param".format(*head))
  for variant, mode in rows:
    ratio = best[variant, mode] / best[variant, "float32"]
    cpu_ratio = cpu[variant, mode] / cpu[variant, "float32"]
    print(
      f"{variant:18s} {mode:14s} {best[variant, mode]:9.2f} {ratio:9.2f} "
      f"{cpu[variant, mode]:7.2f} {cpu_ratio:9.2f} {peak[variant, mode]:8.2f}"
    )


if __name__ == "__main__":
  main()
