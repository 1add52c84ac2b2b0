"""Accuracy of the lean optimizer states against float32 state (issue 15, item 4).

Run: python -m benchmarks.accuracy                    # every section
     python -m benchmarks.accuracy --sections lm      # one at a time

Three sections, each training the same model from the same initialisation on
the same batches with every way of storing RMSprop's buffers
(``examples/train_lm.py``'s STATES: float32, bfloat16, 8bit-nu, 8bit-all):

* ``digits``: the main example's CNN (``examples/train_digits.py``, 15 epochs
  of scikit-learn's digits), test accuracy over 360 images, mean over
  ``--seeds`` seeds (each seed: init and shuffling). Target: every buffer in
  8 bits within 0.5 points of float32 state (mean over >= 3 seeds).
* ``lm``: the character-level transformer of ``examples/train_lm.py`` on the
  standard library's source, final validation loss after ``--lm-steps``
  steps. Target: every buffer in 8 bits within 1% of float32 state.
* ``trajectory``: the optax-parity noisy quadratic of
  ``tests/test_quantize.py::test_trajectory_stays_close_to_float32_state``
  (512 curvatures in [0.1, 10], gradient noise 0.1, lr 1e-2, 200 steps): how
  far each lean state's parameters end from float32 state's, relative to how
  far they moved (median and max over the 512 coordinates).

"8bit-all" is every buffer the variant has in 8 bits (``nu_quantization``,
``mu_quantization``, ``momentum_quantization``); where the installed
optax_rms lacks a keyword the row is recorded as not measured, with the
reason. Each run of a section replaces that section in ``--json`` (default
benchmarks/results/<machine>/accuracy.json) and ``--out`` (accuracy.md beside
it) is rendered from every section recorded there, so sections can be run
separately. A whole run takes ~15 minutes on an idle 2-core CPU.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import pathlib
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..harness import machine_info, results_path

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SECTIONS = ("digits", "lm", "trajectory")
DIGITS_ACCURACY_POINTS = 0.5  # target: |8bit-all - float32| mean test accuracy
LM_RELATIVE = 0.01  # target: |8bit-all / float32 - 1| final validation loss


def _load_example(name: str) -> Any:
  """examples/<name>.py as a module (examples/ is not a package)."""
  if name in sys.modules:
    return sys.modules[name]
  spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def _same(
  rows: list[dict[str, Any]], fn: Callable[..., dict[str, Any]]
) -> Callable[[], dict[str, Any]]:
  """fn, unless an earlier row of the same variant trained the same keywords
  (fn(dry_run=True) returns them): then a copy of that row's figures."""

  def run() -> dict[str, Any]:
    kwargs = fn(dry_run=True)["kwargs"]
    for r in rows:
      if r.get("kwargs") == kwargs:
        return {k: v for k, v in r.items() if k not in ("variant", "state")} | {
          "same_as": r["state"]
        }
    return fn()

  return run


def _attempt(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
  """fn()'s result, or {"skipped": why} when this optax_rms lacks a keyword."""
  try:
    return fn()
  except ValueError as e:
    if "does not have" in str(e):
      return {"skipped": str(e)}
    raise


# ------------------------------------------------------------------- sections


def run_digits(
  seeds: Sequence[int],
  variants: Sequence[str],
  states: Sequence[str],
  epochs: int | None = None,
  log: Callable[[str], None] = print,
  on_row: Callable[[dict[str, Any]], None] = lambda row: None,
) -> list[dict[str, Any]]:
  """The digits CNN per (variant, state, seed); one row per (variant, state).

  A state whose keywords equal an earlier row's (plain's 8bit-all is 8bit-nu)
  reuses that row's figures. ``on_row`` gets each row as it is measured.
  """
  import optax_rms

  lm = _load_example("train_lm")
  digits = _load_example("train_digits")
  data = digits.load_data()
  rows: list[dict[str, Any]] = []
  for variant in variants:
    kw, _ = lm.VARIANTS[variant]
    lr = digits.VARIANTS["momentum" if "momentum" in kw else "plain"][1]
    for state in states:

      def one(state=state, variant=variant, kw=kw, lr=lr, dry_run=False):
        storage = lm.state_kwargs(state, variant)  # raises if a keyword is missing
        if dry_run:
          return {"kwargs": {**kw, **storage}}
        name = f"accuracy_8bit:{variant}:{state}"
        # train_digits builds its optimizer from its VARIANTS registry by name.
        digits.VARIANTS[name] = (
          lambda lr: optax_rms.rmsprop(lr, **kw, **storage),
          lr,
        )
        acc, loss, secs = [], [], []
        for seed in seeds:
          start = time.perf_counter()
          r = digits.train(
            epochs=digits.EPOCHS if epochs is None else epochs,
            variant=name,
            seed=seed,
            data=data,
            progress=False,
          )
          secs.append(time.perf_counter() - start)
          acc.append(r.test_accuracy)
          loss.append(r.test_loss)
        return {"kwargs": {**kw, **storage}, "lr": lr, "test_accuracy": acc,
                "test_loss": loss, "seconds": secs}

      row = {"variant": variant, "state": state, **_attempt(_same(rows, one))}
      log(f"digits {variant} {state}: {_short(row, 'test_accuracy')}")
      rows.append(row)
      on_row(row)
  return rows


def run_lm(
  seeds: Sequence[int],
  variants: Sequence[str],
  states: Sequence[str],
  steps: int | None = None,
  model: dict[str, int] | None = None,
  log: Callable[[str], None] = print,
  on_row: Callable[[dict[str, Any]], None] = lambda row: None,
) -> list[dict[str, Any]]:
  """examples/train_lm.py per (variant, state, seed); as run_digits."""
  lm = _load_example("train_lm")
  data = lm.load_data()
  steps = lm.STEPS if steps is None else steps
  model = model or {}
  rows: list[dict[str, Any]] = []
  for variant in variants:
    for state in states:

      def one(state=state, variant=variant, dry_run=False):
        if dry_run:
          return {"kwargs": lm.state_kwargs(state, variant)}
        val, tr, secs, curves = [], [], [], []
        for seed in seeds:
          r = lm.train(
            steps=steps,
            seed=seed,
            variant=variant,
            state=state,
            data=data,
            progress=False,
            **model,
          )
          val.append(r.val_loss)
          tr.append(r.train_loss)
          secs.append(r.seconds)
          curves.append(r.history)  # per evaluation: step, train/val loss
        return {"kwargs": lm.state_kwargs(state, variant), "steps": steps,
                "lr": r.config["learning_rate"], "val_loss": val,
                "train_loss": tr, "seconds": secs, "history": curves}

      row = {"variant": variant, "state": state, **_attempt(_same(rows, one))}
      log(f"lm {variant} {state}: {_short(row, 'val_loss')}")
      rows.append(row)
      on_row(row)
  return rows


# The noisy quadratic of tests/test_quantize.py, per optimizer configuration;
# modes: the storage keywords on top of it (only those the variant's buffers
# have).
TRAJECTORY_CONFIGS: dict[str, dict[str, Any]] = {
  "plain": {},
  "centered+momentum": {"centered": True, "momentum": 0.9},
  "initial_scale=1": {"initial_scale": 1.0},
}


def _trajectory_modes(kw: dict[str, Any]) -> dict[str, dict[str, Any]]:
  buffers = ["nu"] + ["mu"] * bool(kw.get("centered")) + ["momentum"] * (
    kw.get("momentum") is not None
  )
  modes = {"bfloat16": {f"{b}_dtype": "bfloat16" for b in buffers}}
  for b in buffers:
    modes[f"8bit-{b}"] = {f"{b}_quantization": "8bit"}
  if len(buffers) > 1:
    modes["8bit-all"] = {f"{b}_quantization": "8bit" for b in buffers}
  return modes


def run_trajectory(
  steps: int = 200, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
  import inspect

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  import optax_rms

  key = jax.random.PRNGKey(0)
  a = 10.0 ** jax.random.uniform(key, (512,), minval=-1, maxval=1)
  x0 = jnp.zeros(512)

  def run(tx):
    def step(carry, t):
      x, s = carry
      g = a * (x - 1.0) + 0.1 * jax.random.normal(jax.random.fold_in(key, t), x.shape)
      u, s = tx.update(g, s, x)
      return (optax.apply_updates(x, u), s), None

    return jax.lax.scan(step, (x0, tx.init(x0)), jnp.arange(steps))[0][0]

  known = inspect.signature(optax_rms.rmsprop).parameters
  rows = []
  for config, kw in TRAJECTORY_CONFIGS.items():
    xf = run(optax_rms.rmsprop(1e-2, **kw))
    moved = np.abs(np.asarray(xf - x0))
    for mode, storage in _trajectory_modes(kw).items():
      missing = [k for k in storage if k not in known]
      row: dict[str, Any] = {"config": config, "mode": mode, "kwargs": storage}
      if missing:
        row["skipped"] = f"optax_rms.rmsprop has no {', '.join(missing)}"
      else:
        xq = np.asarray(run(optax_rms.rmsprop(1e-2, **kw, **storage)))
        rel = np.abs(xq - np.asarray(xf)) / moved
        row.update(
          finite=bool(np.all(np.isfinite(xq))),
          median=float(np.median(rel)),
          max=float(np.max(rel)),
        )
      log(f"trajectory {config} {mode}: {row.get('median', row.get('skipped'))}")
      rows.append(row)
  return rows


# --------------------------------------------------------------------- report


def _short(row: dict[str, Any], key: str) -> str:
  return row["skipped"] if "skipped" in row else " ".join(f"{v:.4f}" for v in row[key])


def _mean(xs: Sequence[float]) -> float:
  return sum(xs) / len(xs)


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, int]:
  """Means of `a` and `b` over the seeds both ran (seeds are 0..N-1, so the
  shorter list's), and how many those are: a row run on fewer seeds is
  compared on its own seeds, not against another seeds' mean."""
  k = min(len(a), len(b))
  return _mean(a[:k]), _mean(b[:k]), k


def _find(rows, **match):
  for row in rows:
    if all(row.get(k) == v for k, v in match.items()) and "skipped" not in row:
      return row
  return None


def digits_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per variant: 8bit-all's mean test accuracy against float32 state's."""
  out = []
  for variant in dict.fromkeys(r["variant"] for r in rows):
    f32 = _find(rows, variant=variant, state="float32")
    q = _find(rows, variant=variant, state="8bit-all")
    if f32 is None or q is None:
      continue
    diff = 100 * (_mean(q["test_accuracy"]) - _mean(f32["test_accuracy"]))
    out.append({"variant": variant, "diff_points": diff,
                "seeds": len(q["test_accuracy"]),
                "met": abs(diff) <= DIGITS_ACCURACY_POINTS
                and len(q["test_accuracy"]) >= 3})
  return out


def lm_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per variant: 8bit-all's final validation loss against float32 state's."""
  out = []
  for variant in dict.fromkeys(r["variant"] for r in rows):
    f32 = _find(rows, variant=variant, state="float32")
    q = _find(rows, variant=variant, state="8bit-all")
    if f32 is None or q is None:
      continue
    mq, mf, k = _paired(q["val_loss"], f32["val_loss"])
    rel = mq / mf - 1
    out.append({"variant": variant, "relative": rel, "seeds": k,
                "met": abs(rel) <= LM_RELATIVE})
  return out


STATE_ORDER = ("float32", "bfloat16", "8bit-nu", "8bit-mu", "8bit-momentum", "8bit-all")


def _ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Rows by variant (first seen first), then state in STATE_ORDER."""
  first = {k[0]: i for i, k in reversed(list(enumerate(map(_key, rows))))}
  return sorted(rows, key=lambda r: (first[_key(r)[0]], STATE_ORDER.index(_key(r)[1])))


def _run_lines(rows: list[dict[str, Any]]) -> list[str]:
  """One line per run that measured some of ``rows`` (its conditions)."""
  metas = list(dict.fromkeys(r["meta"] for r in _ordered(rows)))
  if len(metas) == 1:
    return [metas[0]]
  return [f"- run {i + 1} (rows marked {i + 1}): {m}" for i, m in enumerate(metas)]


def _run(rows: list[dict[str, Any]], row: dict[str, Any]) -> str:
  """The state cell's suffix: the run that measured it, a row it copies."""
  metas = list(dict.fromkeys(r["meta"] for r in _ordered(rows)))
  run = "" if len(metas) == 1 else f" ({metas.index(row['meta']) + 1})"
  return run + (f" (= {row['same_as']})" if "same_as" in row else "")


def render(results: dict[str, Any]) -> str:
  """accuracy.md from the recorded sections."""
  lines = [
    "# Accuracy of the lean optimizer states",
    "",
    "Written by `python -m benchmarks.accuracy` (see its docstring for what each",
    "section trains); do not edit by hand. Same initialisation and batches in",
    "every row of a table: only the storage of RMSprop's buffers differs.",
    "`8bit-all` stores every buffer the variant has in 8 bits",
    "(`nu_quantization`, `mu_quantization`, `momentum_quantization`);",
    "`bfloat16` every buffer in bfloat16; `8bit-nu` only `nu` in 8 bits.",
    "Seconds are wall time on a CPU shared with other jobs: noisy.",
    "docs/numerics.md (8-bit section) discusses the figures.",
    "",
  ]
  sections = results.get("sections", {})
  parts = {"digits": _digits_part, "lm": _lm_part, "trajectory": _trajectory_part}
  for name, part in parts.items():
    if sections.get(name):
      lines += part(sections[name])
  return "\n".join(lines)


def _digits_part(d: dict[str, Any]) -> list[str]:
  """The digits table and its target."""
  lines = [
    "## Digits (examples/train_digits.py's CNN)",
    "",
    *_run_lines(d["rows"]),
    "",
    "| variant | state | lr | test accuracy per seed | mean | vs float32 "
    "(points) | test loss (mean) | s per run |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in _ordered(d["rows"]):
    if "skipped" in r:
      lines.append(f"| {r['variant']} | {r['state']} | | not measured: "
                   f"{r['skipped']} | | | | |")
      continue
    f32 = _find(d["rows"], variant=r["variant"], state="float32")
    mean = _mean(r["test_accuracy"])
    vs = f"{100 * (mean - _mean(f32['test_accuracy'])):+.2f}" if f32 else ""
    lines.append(
      f"| {r['variant']} | {r['state']}{_run(d['rows'], r)} | {r['lr']:g} | "
      + " ".join(f"{100 * a:.2f}%" for a in r["test_accuracy"])
      + f" | {100 * mean:.2f}% | {vs} | {_mean(r['test_loss']):.4f} | "
      f"{_mean(r['seconds']):.0f} |"
    )
  lines.append("")
  for t in digits_targets(d["rows"]):
    lines.append(
      f"- Target, {t['variant']}: 8bit-all within "
      f"{DIGITS_ACCURACY_POINTS} points of float32 state (mean over >= 3 seeds): "
      f"{t['diff_points']:+.2f} points over {t['seeds']} seeds, "
      f"**{'MET' if t['met'] else 'MISSED'}**."
    )
  lines.append("")
  return lines


def _lm_part(m: dict[str, Any]) -> list[str]:
  """The LM table and its target."""
  lines = [
    "## Character-level LM (examples/train_lm.py)",
    "",
    *_run_lines(m["rows"]),
    "",
    "| variant | state | peak lr | steps | final validation loss per seed | "
    "vs float32 | final train loss | s per run |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in _ordered(m["rows"]):
    if "skipped" in r:
      lines.append(f"| {r['variant']} | {r['state']} | | | not measured: "
                   f"{r['skipped']} | | | |")
      continue
    f32 = _find(m["rows"], variant=r["variant"], state="float32")
    vs = ""
    if f32:
      mr, mf, k = _paired(r["val_loss"], f32["val_loss"])
      vs = f"{100 * (mr / mf - 1):+.2f}%"
      if k < len(f32["val_loss"]):
        vs += f" (on seed{'s' if k > 1 else ''} {'0' if k == 1 else f'0-{k - 1}'})"
    lines.append(
      f"| {r['variant']} | {r['state']}{_run(m['rows'], r)} | {r['lr']:g} | "
      f"{r['steps']} | "
      + " ".join(f"{v:.4f}" for v in r["val_loss"])
      + f" | {vs} | {_mean(r['train_loss']):.4f} | {_mean(r['seconds']):.0f} |"
    )
  lines.append("")
  for t in lm_targets(m["rows"]):
    lines.append(
      f"- Target, {t['variant']}: 8bit-all's final validation loss within "
      f"{100 * LM_RELATIVE:g}% of float32 state's (mean over the seeds): "
      f"{100 * t['relative']:+.2f}% over {t['seeds']} seeds, "
      f"**{'MET' if t['met'] else 'MISSED'}**."
    )
  lines.append("")
  return lines


def _trajectory_part(tr: dict[str, Any]) -> list[str]:
  """The trajectory deviation table."""
  lines = [
    "## Trajectory deviation (noisy quadratic of tests/test_quantize.py)",
    "",
    *_run_lines(tr["rows"]),
    "",
    "Deviation after the last step, per coordinate: "
    "`|x_lean - x_float32| / |x_float32 - x0|`, median and max over the 512.",
    "",
    "| configuration | state | median | max | finite |",
    "|---|---|---|---|---|",
  ]
  for r in _ordered(tr["rows"]):
    if "skipped" in r:
      lines.append(f"| {r['config']} | {r['mode']} | not measured: "
                   f"{r['skipped']} | | |")
    else:
      lines.append(f"| {r['config']} | {r['mode']}{_run(tr['rows'], r)} | "
                   f"{r['median']:.2e} | "
                   f"{r['max']:.2e} | {r['finite']} |")
  lines.append("")
  return lines


def _key(row: dict[str, Any]) -> tuple[str, str]:
  return (row.get("variant", row.get("config")), row.get("state", row.get("mode")))


def read(path: pathlib.Path) -> dict[str, Any]:
  """The recorded results (none yet: no sections)."""
  return json.loads(path.read_text()) if path.exists() else {"sections": {}}


def merge(
  old: dict[str, Any] | None, rows: list[dict[str, Any]], meta: str
) -> dict[str, Any]:
  """A section's record with ``rows`` replacing the recorded rows of the same
  (variant, state): running a few states again keeps the others' rows. Each
  row carries the ``meta`` line of the run that measured it."""
  rows = [{**r, "meta": meta} for r in rows]
  new = {_key(r) for r in rows}
  kept = [r for r in (old or {}).get("rows", []) if _key(r) not in new]
  return {"rows": kept + rows}


def _commit() -> str:
  """HEAD, "-dirty" when optax_rms/ or examples/ (the code measured) differ."""
  import subprocess

  def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True)

  head = git("rev-parse", "--short", "HEAD").stdout.decode().strip() or "unknown"
  dirty = git("diff", "--quiet", "HEAD", "--", "optax_rms", "examples").returncode
  return head + ("-dirty" if dirty else "")


def _meta(extra: str, started: datetime.datetime, commit: str) -> str:
  import jax

  return (
    f"Run started {started:%Y-%m-%d %H:%M} UTC, "
    f"optax_rms at commit {commit}, jax {jax.__version__} on "
    f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()}), "
    f"Python {platform.python_version()}. {extra}"
  )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.accuracy", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=SECTIONS)
  parser.add_argument("--seeds", type=int, default=3, help="digits seeds")
  parser.add_argument("--lm-seeds", type=int, default=1)
  parser.add_argument("--digits-epochs", type=int, default=None)
  parser.add_argument("--lm-steps", type=int, default=None)
  parser.add_argument(
    "--lm-tiny", action="store_true", help="a tiny LM (smoke tests only)"
  )
  parser.add_argument("--trajectory-steps", type=int, default=200)
  parser.add_argument(
    "--digits-variants", nargs="+", default=["plain", "centered-momentum"]
  )
  parser.add_argument("--lm-variants", nargs="+", default=["centered-momentum"])
  parser.add_argument(
    "--states", nargs="+", default=["float32", "bfloat16", "8bit-nu", "8bit-all"]
  )
  parser.add_argument(
    "--json",
    type=pathlib.Path,
    help="the recorded rows (default: benchmarks/results/<machine>/accuracy.json)",
  )
  parser.add_argument(
    "--out", type=pathlib.Path, help="the report (default: accuracy.md beside it)"
  )
  args = parser.parse_args(argv)
  if args.json is None:
    args.json = results_path(machine_info(), "accuracy.json")
  if args.out is None:
    args.out = args.json.with_suffix(".md")

  commit = _commit()  # when the code is imported, not when a row is written
  for section in args.sections:
    started = datetime.datetime.now(datetime.UTC)

    def save(
      rows: list[dict[str, Any]],
      extra: str,
      section: str = section,
      started: datetime.datetime = started,
    ) -> None:
      meta = _meta(extra, started, commit)
      # Read just before writing: another run may have recorded other rows.
      results = read(args.json)
      old = results["sections"].get(section)
      results["sections"][section] = merge(old, rows, meta)
      args.json.parent.mkdir(parents=True, exist_ok=True)
      args.json.write_text(json.dumps(results, indent=1) + "\n")
      args.out.write_text(render(results))

    if section == "digits":
      seeds = list(range(args.seeds))
      epochs = args.digits_epochs or _load_example("train_digits").EPOCHS
      extra = f"{epochs} epochs, batch 32, seeds {seeds}."
      run_digits(
        seeds,
        args.digits_variants,
        args.states,
        args.digits_epochs,
        on_row=lambda row, extra=extra: save([row], extra),
      )
    elif section == "lm":
      seeds = list(range(args.lm_seeds))
      model = _load_example("train_lm").TINY if args.lm_tiny else None
      extra = f"Seeds {seeds}{' (tiny model)' if args.lm_tiny else ''}."
      run_lm(
        seeds,
        args.lm_variants,
        args.states,
        args.lm_steps,
        model,
        on_row=lambda row, extra=extra: save([row], extra),
      )
    else:
      save(run_trajectory(args.trajectory_steps), f"{args.trajectory_steps} steps.")
  print(f"wrote {args.out} and {args.json}")
  return read(args.json)
