"""train_step.md from run.run_suite's results: targets, then tables."""

from __future__ import annotations

from typing import Any

from ..harness import Target, machine_line, md_table, summary, target_table
from .rows import sgd_for

# Targets of issue 15, per parameter (B = bytes).
NU8_SAVING_MIN = 2.5  # 8-bit nu: peak at least this far below float32 state's
ALL8_SAVING_MIN = 8.0  # c+m, all three buffers in 8 bits: peak saving
ALL8_STATE_MAX = 3.1  # c+m, all three buffers in 8 bits: state at rest
GPU_TIME_RATIO_MAX = 1.1  # 8-bit modes' step time / float32 state's, on a GPU

CM = "c+m"
SGD = "optax.sgd"


def _ok(row: Any) -> bool:
  return isinstance(row, dict) and "error" not in row


def _bpp(nbytes: float, n: int) -> str:
  return f"{nbytes / n:.2f}"


def _ms(s: float) -> str:
  ms = s * 1e3
  return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _tables(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
  return [
    (section, table)
    for section, tables in results["sections"].items()
    for table in tables.values()
  ]


def _not_there(table: dict[str, Any], name: str) -> str:
  if name in table["absent"]:
    return f"n/a: {name!r} needs {', '.join(table['absent'][name])} in optax_rms"
  row = table["rows"].get(name)
  if row is None:
    return f"n/a: {name!r} was not run"
  return f"n/a: {name!r} failed: {row['error']}"


def _saving(
  table: dict[str, Any], mode: str, variant: str, minimum: float
) -> tuple[str, bool | None]:
  """Peak of `ours <variant>, <mode>` against `ours <variant>, float32`."""
  n = table["n_params"]
  ref_name, name = f"ours {variant}, float32", f"ours {variant}, {mode}"
  ref, row = table["rows"].get(ref_name), table["rows"].get(name)
  for nm, r in ((name, row), (ref_name, ref)):
    if not _ok(r):
      return _not_there(table, nm), None
  assert row is not None and ref is not None
  saved = (ref["memory"]["peak"] - row["memory"]["peak"]) / n
  text = (
    f"{saved:.2f} below ({_bpp(row['memory']['peak'], n)} vs "
    f"{_bpp(ref['memory']['peak'], n)} B/param; temporaries "
    f"{_bpp(ref['memory']['temp'], n)} -> {_bpp(row['memory']['temp'], n)})"
  )
  return text, saved >= minimum


def _bf16_targets(table: dict[str, Any]) -> list[Target]:
  """Issue 16: bfloat16 parameters + a wrapper + 8-bit state against float32
  parameters + float32 state, each with the same model's sgd rows beside
  (what the forward and backward alone cost in each parameter dtype)."""
  n, rows, out = table["n_params"], table["rows"], []
  ref_name = "ours plain, float32"
  sgd32, sgd16 = rows.get(sgd_for("float32")), rows.get(sgd_for("bfloat16"))
  for wrapper in ("kahan_summation", "stochastic_rounding"):
    name = f"{wrapper}(ours plain, 8bit nu), bfloat16 params"
    target = (
      f"bfloat16 params + {wrapper} + 8bit nu: peak below float32 params + "
      f"float32 state: {table['name']}"
    )
    row, ref = rows.get(name), rows.get(ref_name)
    missing = [nm for nm, r in ((name, row), (ref_name, ref)) if not _ok(r)]
    if missing:
      out.append((target, _not_there(table, missing[0]), None))
      continue
    assert row is not None and ref is not None
    peak, ref_peak = row["memory"]["peak"], ref["memory"]["peak"]
    text = f"{_bpp(peak, n)} vs {_bpp(ref_peak, n)} B/param"
    if _ok(sgd32) and _ok(sgd16):
      assert sgd32 is not None and sgd16 is not None
      text += (
        f" (the model alone, optax.sgd: {_bpp(sgd16['memory']['peak'], n)} on "
        f"bfloat16 vs {_bpp(sgd32['memory']['peak'], n)} on float32 params)"
      )
    out.append((target, text, peak < ref_peak))
  return out


def targets(results: dict[str, Any]) -> list[Target]:
  """(target, measured, status): status True MET, False MISSED, None not
  measured (the row is not in this optax_rms, failed, or needs a GPU)."""
  out: list[Target] = []
  on_gpu = results["machine"]["platform"] == "gpu"
  for section, table in _tables(results):
    where = table["name"]
    if section != "train_step":
      where = f"update alone, {where}"
    for variant in ("plain", CM):
      text, met = _saving(table, "8bit nu", variant, NU8_SAVING_MIN)
      out.append(
        (
          f"8bit nu peak >= {NU8_SAVING_MIN} B/param below float32 state: "
          f"{where}, {variant}",
          text,
          met,
        )
      )
    if section != "train_step":
      continue
    out.extend(_bf16_targets(table))
    text, met = _saving(table, "8bit all", CM, ALL8_SAVING_MIN)
    out.append(
      (
        f"all three 8bit, c+m: peak >= {ALL8_SAVING_MIN:g} B/param below float32 "
        f"state: {where}",
        text,
        met,
      )
    )
    row = table["rows"].get(f"ours {CM}, 8bit all")
    name = f"all three 8bit, c+m: state <= {ALL8_STATE_MAX} B/param: {where}"
    if _ok(row):
      state = row["state_bytes"] / table["n_params"]
      out.append((name, f"{state:.3f} B/param", state <= ALL8_STATE_MAX))
    else:
      out.append((name, _not_there(table, f"ours {CM}, 8bit all"), None))
    for variant in ("plain", CM):
      ref = table["rows"].get(f"ours {variant}, float32")
      for rname, row in table["rows"].items():
        if not (rname.startswith(f"ours {variant}, 8bit") and _ok(row)):
          continue
        if row["params"] != "float32":  # against float32 state on float32 params
          continue
        name = (
          f"on a GPU, 8bit step time <= {GPU_TIME_RATIO_MAX}x float32 state's: "
          f"{where}, {rname}"
        )
        if not (_ok(ref) and "timing" in row and "timing" in ref):
          out.append((name, "n/a: not timed", None))
          continue
        ratio = row["timing"]["best_s"] / ref["timing"]["best_s"]
        median = row["timing"]["median_s"] / ref["timing"]["median_s"]
        text = f"{ratio:.3f} (median {median:.3f})"
        if on_gpu:
          out.append((name, text, ratio <= GPU_TIME_RATIO_MAX))
        else:
          out.append((name, f"no GPU in this run; on the CPU {text}", None))
  return out


def target_summary(results: dict[str, Any]) -> str:
  return summary(targets(results))


COLUMNS = [
  "row",
  "params",
  "state",
  "state B/param",
  "peak B/param",
  "temp B/param",
  "device peak B/param",
  "best ms",
  "median ms",
  "vs optax.rmsprop",
  "optimizer: time",
  "optimizer: peak B/param",
  "compile s (x float32 state)",
  "N",
]


def _compile(name: str, r: dict[str, Any], rows: dict[str, Any]) -> str:
  """The step's compile seconds; for an `ours` row, over float32 state's."""
  text = f"{r['compile_s']:.2f}" if "compile_s" in r else ""
  ref = rows.get(f"{name.split(', ')[0]}, float32")
  if text and name.startswith("ours ") and _ok(ref) and "compile_s" in ref:
    text += f" ({r['compile_s'] / ref['compile_s']:.2f}x)"
  return text


def table_rows(table: dict[str, Any]) -> list[list[Any]]:
  """One Markdown row per measured row of a table (COLUMNS)."""
  n = table["n_params"]
  rows = table["rows"]
  out = []
  for name, r in rows.items():
    if not _ok(r):
      continue
    sgd_name = sgd_for(r["params"])
    sgd = rows.get(sgd_name) if _ok(rows.get(sgd_name)) else None
    mem, t = r["memory"], r.get("timing")
    ref = rows.get(r["reference"])
    vs = ""
    if t and _ok(ref) and "timing" in ref:
      vs = (
        f"{t['best_s'] / ref['timing']['best_s']:.2f}; "
        f"{t['median_s'] / ref['timing']['median_s']:.2f}"
      )
    opt_time = opt_peak = ""
    if sgd is not None and name != sgd_name:
      opt_peak = f"{(mem['peak'] - sgd['memory']['peak']) / n:+.2f}"
      if t and "timing" in sgd:
        extra = t["median_s"] - sgd["timing"]["median_s"]
        opt_time = f"{extra * 1e3:+.3g} ms ({extra / t['median_s']:.0%})"
    dev = r.get("device_peak")
    out.append(
      [
        name,
        r["params"],
        r["state"],
        _bpp(r["state_bytes"], n),
        _bpp(mem["peak"], n),
        _bpp(mem["temp"], n),
        _bpp(dev, n) if dev is not None else "n/a",
        _ms(t["best_s"]) if t else "",
        _ms(t["median_s"]) if t else "",
        vs,
        opt_time,
        opt_peak,
        _compile(name, r, rows),
        t["n"] if t else "",
      ]
    )
  return out


TITLES = {"train_step": "Whole train step", "update_alone": "Update alone"}


def render(results: dict[str, Any], command: str = "") -> str:
  m = results["machine"]
  minutes, seconds = divmod(round(results["runtime_s"]), 60)
  rows = targets(results)
  out = [
    "# optax_rms train-step benchmark",
    "",
    f"Written by `{command or 'run_suite'}` (scale `{results['scale']}`, {minutes} "
    f'min {seconds} s). How it measures: docs/performance_findings.md, "Train step".',
    "",
    f"- Machine: {machine_line(m)}",
    f"- Versions: Python {m['python']}, jax {m['jax']}, jaxlib {m['jaxlib']}, "
    f"optax {m['optax']}, flax {m['flax']}, optax_rms {m['optax_rms']}",
    f"- Date: {m['date']}; 1-minute load average {results['load_start']} at the "
    f"start, {results['load_end']} at the end",
    f"- Timing: {results['rounds']} interleaved rounds of 1 untimed + "
    f"{results['samples']} timed steps per row (fresh params and state each "
    "round), best and median. Memory: XLA's compiled memory analysis, "
    "deterministic for a given jax and backend; peak = argument + temporary "
    "bytes.",
  ]
  if m["platform"] == "cpu":
    out += [
      "- **Timings are noisy**: this CPU was shared with other jobs during the "
      "run (see the load average); read the time columns as rough and compare "
      "rows of one table only (they ran interleaved, side by side). No GPU: "
      "the device-peak column and the GPU time target are not measured.",
    ]
  if results["scale"] != "full":
    out += [
      "",
      f"Scale `{results['scale']}`: tiny models, for the smoke test; the figures "
      "say nothing about the targets.",
    ]
  out += ["", *target_table(rows)]
  out += [
    "",
    "## Columns",
    "",
    "- `state B/param`: the optimizer state at rest (its non-scalar arrays; "
    "step counters left out) / parameters.",
    "- `peak B/param`: (argument + temporary bytes) / parameters, from "
    "`jax.jit(step, donate_argnums=...).lower(...).compile().memory_analysis()`:"
    " params, state and the batch (or the gradients) coming in, plus XLA's "
    "temporaries (activations, gradients, the update's intermediates). The "
    "outputs are written into the donated inputs. `temp B/param`: the "
    "temporaries alone.",
    "- `device peak B/param`: on a GPU, `memory_stats()['peak_bytes_in_use']` "
    "of a fresh process running that row (less what was in use before its "
    "buffers were made, plus the resident batch); n/a on the CPU.",
    "- `vs optax.rmsprop`: step time / that of `optax.rmsprop` with the same "
    "variant (plain or centered+momentum; the scale rows against plain), "
    "best; median.",
    "- `optimizer: time`, `optimizer: peak`: the row's median step time and "
    "peak over `optax.sgd`'s on parameters of the row's dtype (the same "
    "forward and backward, an update without state); the percentage is that "
    "share of the row's step.",
    "- `c+m` = `centered=True, momentum=0.9`. `8bit all` = nu, mu and momentum"
    " in 8 bits. Rows whose keywords the installed optax_rms lacks are listed "
    "under their table.",
  ]
  for section, tables in results["sections"].items():
    if not tables:
      continue
    out += ["", f"## {TITLES.get(section, section)}", ""]
    for table in tables.values():
      out += [
        f"### {table['name']}: {table['n_params']:,} params, {table['n_leaves']}"
        " leaves",
        "",
        table["description"] + ".",
        "",
      ]
      out += md_table(COLUMNS, table_rows(table))
      failed = {k: v["error"] for k, v in table["rows"].items() if not _ok(v)}
      if failed:
        out += [""] + [f"- failed: `{k}`: {e}" for k, e in failed.items()]
      if table["absent"]:
        out += [
          "",
          "Not in this optax_rms (rows skipped): "
          + "; ".join(
            f"`{k}` (needs {', '.join(v)})" for k, v in table["absent"].items()
          )
          + ".",
        ]
      out.append("")
  return "\n".join(out).rstrip() + "\n"
