"""Command line: run the sections, write train_step.md (and JSON)."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any

from ..harness import load, machine_info, results_path
from . import harness, report, rows
from .models import scales
from .sections import SECTIONS
from .sections._common import child_probe, device_peak_here, measure


def run_suite(
  scale_name: str = "quick",
  sections: list[str] | None = None,
  rounds: int | None = None,
  device_peaks: bool | None = None,
  tables: list[str] | None = None,
  log: Any = print,
) -> dict[str, Any]:
  """Every table of every section asked for; JSON-able results.

  tables: only these tables (model names, "one_leaf"), default all.

  device_peaks: measure the device's own peak per row (one child process per
  row); default: where the device keeps a count (GPUs), not on the CPU.
  """
  scale = scales()[scale_name]
  ok, absent = rows.available()
  if device_peaks is None:
    device_peaks = harness.has_device_peak()
  t_start = time.perf_counter()
  results: dict[str, Any] = {
    "scale": scale_name,
    "rounds": rounds or scale.rounds,
    "samples": scale.samples,
    "machine": machine_info(),
    "load_start": load(),
    "sections": {},
  }
  for section in sections or list(SECTIONS):
    done = {}
    for table, build in SECTIONS[section].setups(scale).items():
      if tables is not None and table not in tables:
        continue
      t0 = time.perf_counter()
      probe = child_probe(section, scale_name, table) if device_peaks else None
      setup = build()
      done[table] = measure(
        setup, ok, absent, rounds or scale.rounds, scale.samples, probe, log
      )
      del setup
      log(f"  {section}:{table} {time.perf_counter() - t0:.0f} s, load {load()}")
    results["sections"][section] = done
  results["load_end"] = load()
  results["runtime_s"] = time.perf_counter() - t_start
  return results


def _probe(scale_name: str, spec: str) -> None:
  """--probe [section, table, row]: print the row's device peak as JSON."""
  section, table, row_name = json.loads(spec)
  setup = SECTIONS[section].setups(scales()[scale_name])[table]()
  (row,) = [r for r in rows.ROWS if r.name == row_name]
  print(json.dumps(device_peak_here(setup, row)))


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.train_step",
    description="Whole-train-step benchmark: time and peak memory per optimizer.",
  )
  parser.add_argument("--quick", action="store_true", help="tiny models, 1 round")
  parser.add_argument(
    "--out",
    help="write the Markdown report here (default: "
    "benchmarks/results/<machine>/train_step.md for the full run; --quick prints it)",
  )
  parser.add_argument("--json", help="also write the raw measurements here")
  parser.add_argument("--sections", help="comma-separated: " + ",".join(SECTIONS))
  parser.add_argument("--rounds", type=int, help="timing rounds (full: 2)")
  parser.add_argument("--tables", help="comma-separated model names / one_leaf")
  parser.add_argument(
    "--device-peaks",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="the device's own peak per row, one process each (default: on a GPU)",
  )
  parser.add_argument(
    "--render",
    nargs="+",
    metavar="JSON",
    help="no run: merge these --json files (tables of separate runs) and render",
  )
  parser.add_argument("--scale", help=argparse.SUPPRESS)
  parser.add_argument("--probe", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  scale_name = args.scale or ("quick" if args.quick else "full")
  if scale_name not in scales():
    parser.error(f"unknown scale {scale_name!r}; choose from {list(scales())}")
  if args.probe:
    _probe(scale_name, args.probe)
    return
  if args.render:
    results = merge([json.loads(pathlib.Path(f).read_text()) for f in args.render])
    _write(results, args, results["command"] + "; merged with --render")
    return
  sections = args.sections.split(",") if args.sections else None
  if unknown := [s for s in sections or () if s not in SECTIONS]:
    parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
  if args.rounds is not None and args.rounds < 1:
    parser.error("--rounds must be at least 1")
  for path in (args.out, args.json):
    if path:
      pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  tables = args.tables.split(",") if args.tables else None
  results = run_suite(scale_name, sections, args.rounds, args.device_peaks, tables)
  cmd = "python -m benchmarks.train_step " + " ".join(
    sys.argv[1:] if argv is None else argv
  )
  results["command"] = cmd.strip()
  _write(results, args, results["command"])


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
  """One results dict from runs of separate tables (--json files): the first
  run's machine and load at the start, the last's at the end, runtimes
  added."""
  out = json.loads(json.dumps(parts[0]))
  for part in parts[1:]:
    for section, tables in part["sections"].items():
      out["sections"].setdefault(section, {}).update(tables)
    out["load_end"] = part["load_end"]
    out["runtime_s"] += part["runtime_s"]
    out["machine"]["date"] += f", {part['machine']['date']}"
    out["command"] = f"{out.get('command', '?')}; {part.get('command', '?')}"
  return out


def _write(results: dict[str, Any], args: argparse.Namespace, cmd: str) -> None:
  markdown = report.render(results, command=cmd)
  if args.json and not args.render:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
  out = args.out
  if out is None and results["scale"] == "full":
    out = results_path(results["machine"], "train_step.md")
  if out:
    pathlib.Path(out).write_text(markdown)
    print(f"wrote {out} ({results['runtime_s']:.0f} s)")
  else:
    print(markdown)
  print(report.target_summary(results))
