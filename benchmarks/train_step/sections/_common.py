"""What every section does with its rows: compile the step once per row, read
its memory analysis, then time all rows interleaved."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from .. import harness
from ..rows import Row

# step(params, opt_state, carry, *consts) -> (params, opt_state, carry, aux):
# params, opt_state and carry (e.g. batchnorm statistics) are donated, consts
# (the batch, or the gradients) are read only.
DONATE = (0, 1, 2)


@dataclasses.dataclass
class Setup:
  """One table of a section: the parameters every row starts from, the
  carried and constant arguments, and the step built around a transformation."""

  name: str
  description: str
  params: Any  # template parameters (float32), copied for every row
  carry: Any  # donated beside params and state, () if none
  consts: tuple[Any, ...]
  step_for: Callable[[optax.GradientTransformation], Callable[..., Any]]

  @property
  def n_params(self) -> int:
    return sum(x.size for x in jax.tree.leaves(self.params))

  @property
  def n_leaves(self) -> int:
    return len(jax.tree.leaves(self.params))


def _cast(params: Any, dtype: str) -> Any:
  return jax.tree.map(lambda a: jnp.array(a, dtype=dtype, copy=True), params)


def _fresh(setup: Setup, row: Row, tx: Any, compiled: Any) -> harness.Fresh:
  def fresh() -> Callable[[], None]:
    box = [_cast(setup.params, row.params), None, jax.tree.map(jnp.copy, setup.carry)]
    box[1] = tx.init(box[0])

    def run() -> None:
      out = compiled(box[0], box[1], box[2], *setup.consts)
      box[0], box[1], box[2] = out[0], out[1], out[2]
      jax.block_until_ready(out)

    return run

  return fresh


def compile_row(setup: Setup, row: Row) -> tuple[Any, Any, dict[str, Any]]:
  """The row's transformation, its compiled step and what XLA says of it."""
  tx = row.make()
  params = jax.eval_shape(lambda p: _cast(p, row.params), setup.params)
  state = jax.eval_shape(tx.init, params)
  t0 = time.perf_counter()
  compiled = (
    jax.jit(setup.step_for(tx), donate_argnums=DONATE)
    .lower(params, state, setup.carry, *setup.consts)
    .compile()
  )
  info = {
    "variant": row.variant,
    "state": row.state,
    "params": row.params,
    "reference": row.reference,
    "compile_s": time.perf_counter() - t0,
    "memory": harness.compiled_memory(compiled),
    "state_bytes": harness.state_nbytes(state),
  }
  return tx, compiled, info


def measure(
  setup: Setup,
  rows: list[Row],
  absent: dict[str, list[str]],
  rounds: int,
  samples: int,
  probe: Callable[[str], int | None] | None = None,
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Memory analysis of every row, then their step times, interleaved.

  probe(row_name): the device's own peak for that row, measured elsewhere (a
  child process per row: the device's high-water mark cannot be reset), or
  None to leave it out.
  """
  out: dict[str, Any] = {}
  fresh: dict[str, harness.Fresh] = {}
  for row in rows:
    try:
      tx, compiled, info = compile_row(setup, row)
      fresh[row.name] = _fresh(setup, row, tx, compiled)
    except Exception as e:  # noqa: BLE001 - reported, not fatal
      out[row.name] = {"error": f"{type(e).__name__}: {e}"[:300]}
      fresh.pop(row.name, None)
      continue
    info["device_peak"] = probe(row.name) if probe else None
    out[row.name] = info
    log(
      f"    {setup.name:16s} {row.name:48s} peak "
      f"{info['memory']['peak'] / setup.n_params:6.2f} B/param"
    )
  timing = harness.interleave(fresh, rounds, samples)
  for name, t in timing.items():
    if "error" in t:  # it compiled but did not run
      out[name] = {"error": "running: " + t["error"]}
    else:
      out[name]["timing"] = t
  return {
    "name": setup.name,
    "description": setup.description,
    "n_params": setup.n_params,
    "n_leaves": setup.n_leaves,
    "const_bytes": harness.state_nbytes(setup.consts),
    "rows": out,
    "absent": absent,
  }


def device_peak_here(setup: Setup, row: Row) -> int | None:
  """In this process (a fresh one): the device's peak while `row` runs two
  steps, less what was in use before its buffers were made, plus the
  constant arguments (already resident), so that it reads like XLA's
  argument + temporary bytes. None where the device keeps no count."""
  if not harness.has_device_peak():
    return None
  tx, compiled, _ = compile_row(setup, row)
  stats = jax.devices()[0].memory_stats()
  before = int(stats["bytes_in_use"])
  run = _fresh(setup, row, tx, compiled)()
  run()
  run()
  peak = harness.device_peak_bytes()
  assert peak is not None
  return peak - before + harness.state_nbytes(setup.consts)


def child_probe(section: str, scale: str, table: str) -> Callable[[str], int | None]:
  """probe(row): device_peak_here in a new process (python -m ... --probe)."""

  def probe(row: str) -> int | None:
    cmd = [sys.executable, "-m", "benchmarks.train_step", "--scale", scale]
    cmd += ["--probe", json.dumps([section, table, row])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
      print(f"device peak probe failed for {row}: {tail}", file=sys.stderr)
      return None
    return json.loads(proc.stdout.strip().splitlines()[-1])

  return probe
