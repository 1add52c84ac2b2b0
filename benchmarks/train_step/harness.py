"""Timing and memory measurement shared by every section.

Timing: `interleave` runs every row in rounds, the order rotated each round,
so background load lands on all rows alike (as benchmarks/step/run.py
does). Each row is rebuilt (fresh params and state) at the start of its turn
in a round, so only one row's buffers are alive at a time: a 34M-parameter
model's rows would not all fit in memory at once.

Memory: `compiled_memory` reads XLA's own analysis of the compiled step
(`compiled.memory_analysis()`); `device_peak_bytes` the device allocator's
high-water mark where the backend keeps one (GPUs; None on the CPU).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ..harness import frozen_heap

# A row's turn: build fresh buffers, return a function that runs one step and
# waits for it. Called once per round; its buffers die with the closure.
Fresh = Callable[[], Callable[[], None]]


def interleave(rows: dict[str, Fresh], rounds: int, samples: int) -> dict[str, Any]:
  """Per-step seconds of each row: for `rounds` rounds (order rotated each
  round) each row builds its buffers, runs one untimed step (first touch of
  the new buffers, the thread pool woken after the previous row) and then
  `samples` timed steps, each waited for.

  Returns {row: {"best_s", "median_s", "n"}}, or {row: {"error": ...}} for a
  row that raised (it is not run again).
  """
  names = list(rows)
  times: dict[str, list[float]] = {name: [] for name in names}
  errors: dict[str, dict[str, str]] = {}
  # The collections between rows free a row's buffers before the next one's
  # are made; with the heap frozen each costs only what the rows made.
  with frozen_heap():
    for r in range(rounds):
      shift = r % max(1, len(names))
      for name in names[shift:] + names[:shift]:
        if name in errors:
          continue
        try:
          run = rows[name]()
          run()
        except Exception as e:  # noqa: BLE001 - reported, not fatal
          errors[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
          continue
        gc.collect()
        gc.disable()  # no collector pause inside a timed step
        try:
          for _ in range(samples):
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
        finally:
          gc.enable()
        del run
        gc.collect()
  stats: dict[str, Any] = {
    name: {"best_s": min(t), "median_s": statistics.median(t), "n": len(t)}
    for name, t in times.items()
    if t and name not in errors
  }
  return stats | errors


def compiled_memory(compiled: Any) -> dict[str, int]:
  """XLA's memory analysis of a compiled executable, in bytes.

  "argument" are the inputs (donated ones included), "temp" the buffers the
  program allocates for its own intermediates, "output" its results, "alias"
  the outputs written into donated inputs. While the step runs, the live
  memory is at most argument + temp + the outputs that alias nothing
  (output - alias): that sum is "peak".
  """
  m = compiled.memory_analysis()
  out = {
    "argument": int(m.argument_size_in_bytes),
    "output": int(m.output_size_in_bytes),
    "alias": int(m.alias_size_in_bytes),
    "temp": int(m.temp_size_in_bytes),
  }
  out["peak"] = out["argument"] + out["temp"]
  out["unaliased_output"] = max(0, out["output"] - out["alias"])
  return out


def device_peak_bytes() -> int | None:
  """`peak_bytes_in_use` of the first device since the process started, or
  None where the backend keeps no such count (the CPU)."""
  stats = jax.devices()[0].memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return int(stats["peak_bytes_in_use"])


def has_device_peak() -> bool:
  """Whether this backend reports a device peak (worth a child per row)."""
  return device_peak_bytes() is not None


def state_nbytes(state: Any) -> int:
  """Bytes of the non-scalar arrays of a state (or of its eval_shape
  ShapeDtypeStructs); scalar step counters left out, as benchmarks/step does."""
  return sum(
    int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
    for x in jax.tree.leaves(state)
    if len(x.shape) > 0
  )
