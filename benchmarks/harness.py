"""What every benchmark shares: the machine, its load, where results go, and
the target table.

- `machine_info()`: the CPU, memory, versions, accelerator and date, one dict
  that every report's header is written from.
- `load()`: the 1-minute load average (a load above the core count means
  other jobs shared the machine while it was measured).
- `machine_dir(machine)` / `results_path(machine, name)`: results live in
  ``benchmarks/results/<machine>/``, ``cpu-<cores>core`` on a CPU, the card's
  short name (``H100``, ``H200``) on a GPU. A suite's default output path.
- `frozen_heap()`: the timing loops run with the heap frozen.
- Targets: a row is ``(target, measured, met)``, met True (MET), False
  (**MISSED**) or None (not measured); `counts`, `summary` and
  `target_table` print them the same way in every report.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import pathlib
import platform
import re
from collections.abc import Iterator, Sequence
from typing import Any

BENCHMARKS = pathlib.Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"

# A target row: (target, measured, status); status True = MET, False =
# MISSED, None = not measured (section not run, failed, or a peer absent).
Target = tuple[str, str, bool | None]


# --- the machine -----------------------------------------------------------------


def load() -> str:
  """The 1-minute load average, "?" where /proc has none."""
  try:
    return pathlib.Path("/proc/loadavg").read_text().split(" ")[0]
  except OSError:
    return "?"


def _cpu_and_memory() -> tuple[str, str]:
  cpu, mem = platform.processor() or platform.machine(), "?"
  try:
    info = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in info if ":" in line and line.strip())
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    cpu = (
      f"{fields.get('model name', cpu)} (family {fields.get('cpu family', '?')}, "
      f"model {fields.get('model', '?')})"
    )
    meminfo = pathlib.Path("/proc/meminfo").read_text().splitlines()
    kib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    mem = f"{kib / 2**20:.1f} GiB"
  except (OSError, StopIteration, ValueError):
    pass
  return cpu, mem


def _version(module: str) -> str:
  try:
    return __import__(module).__version__
  except ImportError:
    return "not installed"


def machine_info() -> dict[str, Any]:
  """The host, the first JAX device, the versions and the date (UTC).

  Starts JAX's backend: a parent that must not hold a GPU's memory asks a
  child process for it."""
  import jax
  import jaxlib
  import numpy as np
  import optax

  cpu, mem = _cpu_and_memory()
  device = jax.devices()[0]
  return {
    "cpu": cpu,
    "cores": os.cpu_count(),
    "memory": mem,
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "optax": optax.__version__,
    "flax": _version("flax"),
    "numpy": np.__version__,
    "optax_rms": _version("optax_rms"),
    "platform": device.platform,
    "device": device.device_kind,
    "device_count": jax.device_count(),
    "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
  }


def machine_line(machine: dict[str, Any]) -> str:
  """One line: "JAX on the CPU (<cpu>, n cores)" or "JAX on <GPU>; host ..."."""
  if machine["platform"] == "cpu":
    return f"JAX on the CPU ({machine['cpu']}, {machine['cores']} cores)"
  return (
    f"JAX on {machine['device']} (`{machine['platform']}`); host "
    f"{machine['cpu']}, {machine['cores']} cores"
  )


# --- where results go ------------------------------------------------------------


def machine_dir(machine: dict[str, Any]) -> str:
  """The results folder's name for this machine: ``cpu-2core`` on a 2-core
  CPU, the card's model on a GPU (``NVIDIA H100 80GB HBM3`` -> ``H100``)."""
  if machine["platform"] == "cpu":
    return f"cpu-{machine['cores']}core"
  words = [w for w in re.split(r"[^A-Za-z0-9.]+", machine["device"]) if w]
  words = [w for w in words if w.upper() not in ("NVIDIA", "TESLA", "AMD")]
  return words[0] if words else machine["platform"]


def results_path(machine: dict[str, Any], name: str) -> pathlib.Path:
  """``benchmarks/results/<machine_dir>/<name>``, its folder made."""
  path = RESULTS / machine_dir(machine) / name
  path.parent.mkdir(parents=True, exist_ok=True)
  return path


# --- timing ----------------------------------------------------------------------


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
  """Python's collector skips every object alive on entry until exit
  (`gc.freeze`), so a `gc.collect()` inside costs the objects made since, not
  the process's whole heap. For blocks whose entry objects (modules, JAX's
  caches, compiled steps) outlive them: a cycle among those that dies inside
  is collected only after exit. In the test suite's process (1.4M objects)
  each full collection took 1.1 s: 97 of the train-step smoke test's 128 s
  before the timing loop ran frozen."""
  gc.collect()
  gc.freeze()
  try:
    yield
  finally:
    gc.unfreeze()


# --- targets and tables ----------------------------------------------------------


def status(met: bool | None) -> str:
  return {True: "MET", False: "**MISSED**", None: "not measured"}[met]


def counts(rows: Sequence[Target]) -> str:
  """The counts: "3 MET, 1 MISSED" (", 2 not measured" where some were not)."""
  met = sum(r[2] is True for r in rows)
  missed = sum(r[2] is False for r in rows)
  text = f"{met} MET, {missed} MISSED"
  if rest := len(rows) - met - missed:
    text += f", {rest} not measured"
  return text


def summary(rows: Sequence[Target]) -> str:
  """The console's closing lines: the counts, then every MISSED row."""
  lines = [f"targets: {counts(rows)}"]
  lines += [f"  MISSED {name}: {meas}" for name, meas, met in rows if met is False]
  return "\n".join(lines)


def md_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> list[str]:
  """A Markdown table's lines; "|" inside a cell is escaped."""

  def line(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

  return [line(header), "|" + "---|" * len(header)] + [line(r) for r in rows]


def target_table(rows: Sequence[Target]) -> list[str]:
  """The "## Targets: ..." section of a report."""
  table = md_table(
    ["target", "measured", "status"], [[t, x, status(s)] for t, x, s in rows]
  )
  return [f"## Targets: {counts(rows)}", "", *table]
