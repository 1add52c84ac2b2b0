"""The train step's peak under XLA:CPU's two schedulers: where the 8-bit
state's missing saving goes.

Question: is the transformer's missing 8-bit nu saving the schedule? (Yes:
docs/performance_findings.md, "Train step".)

Run: python -m benchmarks.studies.cpu_scheduler [--out FILE]
(default: benchmarks/results/<machine>/cpu_scheduler.md)

XLA:CPU orders a program's instructions with a concurrency-optimized
scheduler by default (`--xla_cpu_enable_concurrency_optimized_scheduler`,
true), which may run independent work later to keep both cores busy; with
the flag false it uses a memory-minimizing list scheduler. The flag is read
when the backend starts (per-compile `compiler_options` do not change it:
tried), so each scheduler runs in a child process with `XLA_FLAGS` set.

For each model of the train-step benchmark (benchmarks/train_step, full
scale) and the rows its 8-bit targets compare (`ours plain` / `ours c+m`
with float32 state and 8-bit nu, and c+m with every buffer in 8 bits), this
compiles the whole donated train step and reports XLA's compiled memory
analysis (argument + temporary bytes, per parameter) under each scheduler,
with the 8-bit nu saving against float32 state beside. Compile only, no
timing: deterministic for a given jax, a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
from collections.abc import Sequence

from ..harness import machine_info, results_path

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
SCHEDULERS = {"default (concurrency-optimized)": "true", "memory-minimizing": "false"}
ROWS = (
  "ours plain, float32",
  "ours plain, 8bit nu",
  "ours c+m, float32",
  "ours c+m, 8bit nu",
  "ours c+m, 8bit all",
)
MODELS = ("transformer_lm", "resnet_cnn", "mlp_many_leaves")
NU8_SAVING_MIN = 2.5  # issue 15's target, B/param


def child(scale: str, names: Sequence[str] = MODELS) -> dict:
  """Peak and temporaries of ROWS on every model, under this process's flags."""
  from ..train_step import models, rows
  from ..train_step.sections import _common, train_step

  by_name = {row.name: row for row in rows.ROWS}
  setups = train_step.setups(models.scales()[scale])
  out: dict = {}
  for model in names:
    setup = setups[model]()
    out[model] = {}
    for name in ROWS:
      _, _, info = _common.compile_row(setup, by_name[name])
      mem = info["memory"]
      out[model][name] = {
        "peak": mem["peak"] / setup.n_params,
        "temp": mem["temp"] / setup.n_params,
      }
  return out


def measure(scale: str = "full", models: Sequence[str] = MODELS) -> dict:
  results = {}
  for label, value in SCHEDULERS.items():
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {FLAG}={value}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.studies.cpu_scheduler", "--child"]
      + ["--scale", scale]
      + ["--models", ",".join(models)],
      env=env,
      cwd=ROOT,
      capture_output=True,
      text=True,
      check=True,
    )
    results[label] = json.loads(proc.stdout.strip().splitlines()[-1])
  return results


def report(results: dict, scale: str = "full") -> str:
  import jax

  labels = list(SCHEDULERS)
  models = list(results[labels[0]])
  lines = [
    "# The train step's peak under XLA:CPU's two schedulers",
    "",
    "Written by `python -m benchmarks.studies.cpu_scheduler` (what it does: its "
    f"docstring). jax {jax.__version__}, {platform.machine()} CPU, the "
    f"train-step benchmark's models at scale `{scale}`. Bytes per parameter: peak = "
    "argument + temporary bytes of the donated train step "
    "(`compiled.memory_analysis()`); temp = the temporaries alone.",
    "",
    "| model | row | " + " | ".join(f"{s}: peak | {s}: temp" for s in labels) + " |",
    "|---|---|" + "---|---|" * len(labels),
  ]
  for model in models:
    for row in ROWS:
      cells = []
      for s in labels:
        r = results[s][model][row]
        cells += [f"{r['peak']:.2f}", f"{r['temp']:.2f}"]
      lines.append(f"| {model} | {row} | " + " | ".join(cells) + " |")
  lines += [
    "",
    f"8-bit nu: peak saving against float32 state (target >= {NU8_SAVING_MIN} "
    "B/param):",
    "",
    "| model | variant | " + " | ".join(labels) + " |",
    "|---|---|" + "---|" * len(labels),
  ]
  for model in models:
    for variant in ("plain", "c+m"):
      cells = []
      for s in labels:
        r = results[s][model]
        saved = (
          r[f"ours {variant}, float32"]["peak"] - r[f"ours {variant}, 8bit nu"]["peak"]
        )
        verdict = "MET" if saved >= NU8_SAVING_MIN else "**MISSED**"
        cells.append(f"{saved:.2f} ({verdict})")
      lines.append(f"| {model} | {variant} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.studies.cpu_scheduler",
    description=__doc__.split("\n")[0],
  )
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--scale", choices=("full", "quick"), default="full")
  parser.add_argument("--models", default=",".join(MODELS), help=argparse.SUPPRESS)
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    help="default: benchmarks/results/<machine>/cpu_scheduler.md",
  )
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(child(args.scale, args.models.split(","))))
    return 0
  text = report(measure(args.scale), args.scale)
  out = args.out or results_path(machine_info(), "cpu_scheduler.md")
  out.write_text(text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
