"""step.md and step.png from the measurements of run.run_suite: the machine,
the targets, then one part per section that ran (a small function each)."""

from __future__ import annotations

import pathlib
from typing import Any

from ..harness import Target, md_table, summary, target_table

# Report order; a tree section holds those it timed ("ours bf16 state" only on
# the bfloat16 tree, no torch rows where torch could not run beside JAX).
FLATTENED = "optax.flatten(ours)"
PACKED = "pack_small(ours)"  # optax_rms.pack_small: the library's own layout
PAIRED_TRIAD = "triad in place"  # a ceiling timed beside the steps, not a step
IMPLS = (
  "ours",
  "ours bf16 state",
  PACKED,
  FLATTENED,
  "optax",
  "torch foreach",
  "torch single",
)
STEP_RATIO_MAX = 1.05  # jitted step, ours / optax, best-of-N
# The sections that targets are read from (run.section_names() less
# roofline and states): one left out of a run is listed as not measured.
TARGET_SECTIONS = (
  "tree:one_big_leaf",
  "tree:resnet50_like",
  "tree:resnet50_flax",
  "tree:many_small",
  "tree:transformer_like",
  "tree:bf16_big_leaf",
  "compile",
  "eager",
)
ROOFLINE_MIN = 0.80  # ours on the one-big-leaf tree, fraction of the roofline
EAGER_SPEEDUP_MIN = 10.0  # optax eager / ours eager
COMPILE_RATIO_MAX = 0.70  # ours / optax, centered+momentum, many_small tree
# The torch and compile targets are judged on the faster of ours and
# pack_small(ours): both are optax_rms, the second one wrapper away (as
# torch's foreach is its own grouping of tensors). Both figures are printed.
EAGER_REL_DIFF_MAX = 1e-6  # "identical to float32 rounding": a few ulps


def _ms(s: float) -> str:
  ms = s * 1e3
  return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _gbs(nbytes: int, s: float) -> float:
  return nbytes / s / 1e9


def _ok(sec: Any) -> bool:
  """A section that ran (not missing, not {"error": ...})."""
  return isinstance(sec, dict) and "error" not in sec


def roofline(results: dict[str, Any], stat: str = "best_s") -> tuple[float, str]:
  """Highest GB/s over the roofline kernels of both roofline runs, and its
  kernel; by best time (``stat="best_s"``) or by median time ("median_s")."""
  best, which = 0.0, "?"
  for key in ("roofline", "roofline_end"):
    sec = results["sections"].get(key)
    if not _ok(sec):
      continue
    for name, k in sec["kernels"].items():
      gbs = _gbs(k["bytes"], k[stat])
      if gbs > best:
        best, which = gbs, f"{name} ({'start' if key == 'roofline' else 'end'})"
  return best, which


def _tree_sections(results: dict[str, Any]) -> list[dict[str, Any]]:
  return [v for k, v in results["sections"].items() if k.startswith("tree:") and _ok(v)]


def _bytes_note(tree: dict[str, Any], impls: dict[str, Any]) -> str:
  """Where ours must move more bytes than optax (the bfloat16 tree), say so."""
  ours, ref = impls["ours"], impls["optax"]
  if ours["bytes"] == ref["bytes"]:
    return ""
  n = tree["n_params"]
  note = (
    f"; ours moves {ours['bytes'] / n:.0f} B/param (float32 state), optax "
    f"{ref['bytes'] / n:.0f}"
  )
  like = impls.get("ours bf16 state")
  if like:
    note += f"; like-for-like (ours bf16 state) {like['best_s'] / ref['best_s']:.3f}"
  return note


def targets(results: dict[str, Any]) -> list[Target]:
  """(target, measured, status) rows, one kind of target after the other."""
  trees = _tree_sections(results)
  rows = [row for tree in trees for row in _step_targets(tree)]
  big = [tree for tree in trees if tree["name"] == "one_big_leaf"]
  rows += [row for tree in big for row in _roofline_targets(results, tree)]
  rows += [row for tree in trees for row in _torch_targets(results, tree)]
  rows += _eager_targets(results["sections"].get("eager"))
  rows += _compile_targets(results["sections"].get("compile"))
  return rows + _unmeasured_sections(results)


def _step_targets(tree: dict[str, Any]) -> list[Target]:
  """ours/optax, best of N, per variant."""
  rows = []
  for vname, impls in tree["variants"].items():
    ours, ref = impls["ours"], impls["optax"]
    ratio = ours["best_s"] / ref["best_s"]
    rows.append(
      (
        f"step ours/optax <= {STEP_RATIO_MAX}: {tree['name']}, {vname}",
        f"{ratio:.3f} ({_ms(ours['best_s'])} vs {_ms(ref['best_s'])} ms; "
        f"median {ours['median_s'] / ref['median_s']:.3f}"
        f"{_bytes_note(tree, impls)})",
        ratio <= STEP_RATIO_MAX,
      )
    )
  return rows


def _roofline_targets(results: dict[str, Any], tree: dict[str, Any]) -> list[Target]:
  """ours' GB/s on the one big leaf against the ceiling, per variant."""
  peak, _ = roofline(results)
  rows: list[Target] = []
  for vname, impls in tree["variants"].items():
    name = f">= {ROOFLINE_MIN:.0%} of roofline: one_big_leaf, {vname}"
    ours = impls["ours"]
    gbs = _gbs(ours["bytes"], ours["best_s"])
    gbs_median = _gbs(ours["bytes"], ours["median_s"])
    if PAIRED_TRIAD in impls:
      # The in-place triad timed in the same rounds as the steps: the same
      # moments, where the host's bandwidth drifts between the roofline's
      # runs (one run: 65 GB/s at the start, 96 at the end). Median to
      # median; the run's best roofline is printed beside it.
      triad = impls[PAIRED_TRIAD]
      ceiling = _gbs(triad["bytes"], triad["median_s"])
      fraction = gbs_median / ceiling
      measured = (
        f"{fraction:.0%} of the in-place triad timed beside it, median to "
        f"median ({gbs_median:.1f} of {ceiling:.1f} GB/s)"
      )
      if peak:
        measured += f"; best to the run's best roofline {gbs / peak:.0%}"
    elif peak:
      # Judged median to median: a best-of-N step time and a best-of-N
      # roofline come from different moments. Best to best beside it.
      peak_median, _ = roofline(results, "median_s")
      fraction = gbs_median / peak_median
      measured = (
        f"{fraction:.0%} median to median ({gbs_median:.1f} of "
        f"{peak_median:.1f} GB/s); best to best {gbs / peak:.0%} "
        f"({gbs:.1f} of {peak:.1f} GB/s)"
      )
    else:
      rows.append((name, "n/a: no roofline measured", None))
      continue
    if ours.get("hlo_bytes", 0) > ours["bytes"]:
      measured += (
        f"; the compiled step's passes move "
        f"{ours['hlo_bytes'] / tree['n_params']:.0f} B/param, not "
        f"{ours['bytes'] / tree['n_params']:.0f}: "
        f"{ours['bytes'] / ours['hlo_bytes']:.0%} if all stream from memory"
      )
    rows.append((name, measured, fraction >= ROOFLINE_MIN))
  return rows


def _torch_targets(results: dict[str, Any], tree: dict[str, Any]) -> list[Target]:
  """The faster of ours and pack_small(ours) against torch foreach."""
  rows: list[Target] = []
  for vname, impls in tree["variants"].items():
    name = f"faster than torch foreach: {tree['name']}, {vname}"
    if "torch foreach" not in impls:
      why = results["machine"].get("torch_device", "torch not run")
      rows.append((name, f"n/a: torch {why}", None))
      continue
    ref = impls["torch foreach"]["best_s"]
    ours = [i for i in ("ours", PACKED) if i in impls]
    measured = "; ".join(
      f"{i}: {ref / impls[i]['best_s']:.2f}x ({_ms(impls[i]['best_s'])} ms)"
      for i in ours
    )
    measured += f"; torch foreach {_ms(ref)} ms"
    if FLATTENED in impls:
      flat = impls[FLATTENED]["best_s"]
      measured += f"; {FLATTENED}: {ref / flat:.2f}x ({_ms(flat)} ms)"
    best = min(impls[i]["best_s"] for i in ours)
    rows.append((name, measured, best < ref))
  return rows


def _eager_targets(eager: Any) -> list[Target]:
  """Speed against optax eager, and agreement with it, per variant."""
  rows: list[Target] = []
  for vname, row in eager.items() if _ok(eager) else ():
    if not isinstance(row, dict):
      continue
    speedup = row["optax"]["best_s"] / row["ours"]["best_s"]
    rows.append(
      (
        f"eager update >= {EAGER_SPEEDUP_MIN:.0f}x faster than optax eager: "
        f"many_small, {vname}",
        f"{speedup:.1f}x ({_ms(row['ours']['best_s'])} vs "
        f"{_ms(row['optax']['best_s'])} ms)",
        speedup >= EAGER_SPEEDUP_MIN,
      )
    )
    rows.append(
      (
        f"eager result = optax's to float32 rounding "
        f"(<= {EAGER_REL_DIFF_MAX:.0e}): many_small, {vname}",
        f"max|Δ|/max|ref| {row['max_rel_diff']:.1e} per leaf; "
        f"{row['equal_fraction']:.0%} of elements bit-identical",
        row["max_rel_diff"] <= EAGER_REL_DIFF_MAX,
      )
    )
  return rows


def _compile_targets(comp: Any) -> list[Target]:
  """centered+momentum: the faster of ours and pack_small(ours) / optax."""
  comp = comp.get("centered+momentum") if _ok(comp) else None
  if not comp:
    return []
  ref = comp["optax"]["total_best_s"]
  ours = [i for i in ("ours", PACKED) if i in comp]
  measured = "; ".join(
    f"{i}: {comp[i]['total_best_s'] / ref:.2f} ({comp[i]['total_best_s']:.2f} s)"
    for i in ours
  )
  ratio = min(comp[i]["total_best_s"] for i in ours) / ref
  return [
    (
      f"compile ours/optax <= {COMPILE_RATIO_MAX}: many_small, centered+momentum",
      f"{measured}; optax {ref:.2f} s",
      ratio <= COMPILE_RATIO_MAX,
    )
  ]


def _unmeasured_sections(results: dict[str, Any]) -> list[Target]:
  """A section that failed, or that this run left out (a subset, or a run
  cut short): its targets are not measured."""
  rows: list[Target] = []
  for name, sec in results["sections"].items():
    if not _ok(sec) and name != "roofline_end":
      rows.append(
        (f"targets of section {name}", f"n/a: it failed: {sec['error']}", None)
      )
  for name in TARGET_SECTIONS:
    if name not in results["sections"]:
      rows.append((f"targets of section {name}", "n/a: not in this run", None))
  return rows


def target_summary(results: dict[str, Any]) -> str:
  return summary(targets(results))


def _steps_per_sample(node: Any) -> list[int]:
  """Every "steps_per_sample" in the results, at any depth."""
  if isinstance(node, dict):
    own = [node["steps_per_sample"]] if "steps_per_sample" in node else []
    return own + [m for v in node.values() for m in _steps_per_sample(v)]
  return []


def _machine_lines(results: dict[str, Any]) -> list[str]:
  m = results["machine"]
  host = f"{m['cpu']}, {m['cores']} cores, {m['memory']}"
  if m["platform"] == "cpu":
    where = f"- Machine: {host}; JAX on the CPU"
  else:
    where = (
      f"- Machine: JAX on {m['device_count']}x {m['device']} (platform "
      f"`{m['platform']}`, the first device timed); host {host}"
    )
  per_sample = sorted(set(_steps_per_sample(results["sections"])))
  if per_sample in ([], [1]):
    timing = "- Timing: each sample is one step, waited for (block_until_ready)"
  else:
    timing = (
      "- Timing: each sample is the mean of m steps queued back to back with "
      f"one wait at the end, m = {per_sample[0]} to {per_sample[-1]} (so a "
      "sample lasts >= 2 ms: a per-step wait would add the launch and sync "
      "latency to every step); eager updates are timed one call each"
    )
  return [
    where,
    timing,
    f"- torch rows: {m['torch_device']}",
    f"- Versions: Python {m['python']}, jax {m['jax']}, jaxlib {m['jaxlib']}, "
    f"optax {m['optax']}, torch {m['torch']}, numpy {m['numpy']}",
    f"- Date: {m['date']}; 1-minute load average {results['load_start']} at the "
    f"start, {results['load_end']} at the end (a load above the core count "
    "means other jobs shared the machine; targets use best-of-N, medians show "
    "the noise)",
  ]


# The headline: the whole train step's peak memory and time per optimizer,
# measured by benchmarks/train_step/ into its own file.
TRAIN_STEP_POINTER = [
  "## Train step",
  "",
  "The whole jitted train step (forward, backward, update; params and state "
  "donated) on three Flax NNX models, with its peak memory per parameter and "
  "time per optimizer and state mode, and issue 15's memory targets: "
  "[train_step.md](train_step.md), written by `python -m "
  "benchmarks.train_step`. The sections below time the optimizer step alone.",
  "",
]


def render(results: dict[str, Any], command: str = "") -> str:
  """step.md: machine, target table, then one part per section that ran."""
  out = _header(results, command) + TRAIN_STEP_POINTER
  out += target_table(targets(results))
  out += _roofline_part(results)
  out += _trees_part(results)
  out += _states_part(results["sections"].get("states"))
  out += _compile_part(results["sections"].get("compile"))
  out += _eager_part(results["sections"].get("eager"))
  out.append("")
  return "\n".join(out)


def _header(results: dict[str, Any], command: str) -> list[str]:
  """Title, command, machine; the scale's caveat; the sections that failed."""
  minutes, seconds = divmod(round(results["runtime_s"]), 60)
  out = [
    "# optax_rms step benchmark",
    "",
    f"Written by `{command or 'benchmarks.step.run.run_suite'}` (scale "
    f"`{results['scale']}`, {minutes} min {seconds} s). How it measures: "
    "`docs/performance_findings.md`.",
    "",
    *_machine_lines(results),
    "",
  ]
  if results["scale"] != "full":
    out += [
      f"Scale `{results['scale']}`: smaller trees and fewer samples than the "
      "targets are set for (dispatch overhead weighs more, arrays may fit in "
      "cache), so MET/MISSED below is indicative only; the full run decides.",
      "",
    ]
  failed = {k: v["error"] for k, v in results["sections"].items() if not _ok(v)}
  if failed:
    out += ["## Sections that failed", ""]
    out += [f"- `{k}`: {err}" for k, err in failed.items()]
    out.append("")
  return out


def _roofline_part(results: dict[str, Any]) -> list[str]:
  sections = results["sections"]
  rows = []
  for key, when in (("roofline", "start"), ("roofline_end", "end")):
    sec = sections.get(key)
    if not _ok(sec):
      continue
    for name, k in sec["kernels"].items():
      rows.append(
        [
          f"{name} ({when})",
          f"{k['bytes'] / sec['n']:.0f}",
          _ms(k["best_s"]),
          _ms(k["median_s"]),
          f"{_gbs(k['bytes'], k['best_s']):.1f}",
          f"{_gbs(k['bytes'], k['median_s']):.1f}",
          k["n"],
        ]
      )
  if not rows:
    return []
  peak, peak_kernel = roofline(results)
  n = next(sections[k]["n"] for k in ("roofline", "roofline_end") if k in sections)
  out = [
    "",
    "## Bandwidth roofline",
    "",
    f"float32 arrays of {n:,} elements ({n * 4 / 2**20:.0f} MiB each), written "
    "into a donated buffer; run first and last. Bytes as STREAM counts them. "
    f"Roofline used below: **{peak:.1f} GB/s** ({peak_kernel}), the best of "
    "all six.",
    "",
  ]
  header = ["kernel", "B/elem", "best ms", "median ms", "best GB/s", "median GB/s"]
  return out + md_table([*header, "N"], rows)


TREES_INTRO = (
  "`B/param` = the fewest bytes a step must move, per parameter: params "
  "read and written, grads read, every state array read and written (20 "
  "for plain float32). `HLO B/param` = what the compiled program moves if "
  "each of its top-level fusions reads its operands and writes its results "
  "once (more than B/param where XLA splits the step into several passes). "
  "`ops` = the compiled program's top-level operations (fusions, copies, "
  "concatenations: one kernel launch each on a GPU, one loop on the CPU); "
  "on trees of many small leaves the step's time follows them. "
  "GB/s = B/param bytes / best time; of roofline = that GB/s / the "
  "roofline above. vs optax = time / optax's time (best; median). On "
  "the bfloat16 tree, ours keeps float32 state and so moves more bytes "
  "than optax (14 vs 10 B/param plain): its time ratio to optax is still "
  "the target; `ours bf16 state` (same bytes as optax) is the "
  "like-for-like row. `pack_small(ours)` is "
  "`optax_rms.pack_small(optax_rms.rmsprop(...))`: the state of the leaves "
  "of <= 65,536 elements packed into flat vectors of <= 32 leaves, so one "
  "kernel updates many leaves' statistics, for the price of concatenating "
  "their gradients and slicing their updates each step. `optax.flatten(ours)` "
  "(on the 1000 small leaves) packs every leaf into one vector. The "
  "ours/optax and roofline targets are read from `ours`; the torch and "
  "compile targets from the faster of `ours` and `pack_small(ours)`, both "
  "printed. `triad in "
  "place` (on the one big leaf) is no optimizer: STREAM's triad `b = b + "
  "s*c` on arrays of the same size, timed in the same rounds as the steps "
  "(12 B/element), the ceiling the roofline target is judged against."
)
TREE_COLUMNS = [
  "variant",
  "impl",
  "B/param",
  "HLO B/param",
  "ops",
  "best ms",
  "median ms",
  "GB/s",
  "of roofline",
  "vs optax",
  "N",
]


def _trees_part(results: dict[str, Any]) -> list[str]:
  trees = _tree_sections(results)
  if not trees:
    return []
  peak, _ = roofline(results)
  out = ["", "## Jitted step (params and state donated)", "", TREES_INTRO, ""]
  for tree in trees:
    out += [
      f"### {tree['name']}: {tree['n_params']:,} params, {tree['n_leaves']} leaves",
      "",
      tree["description"] + ".",
      "",
    ]
    out += md_table(TREE_COLUMNS, _tree_rows(tree, peak))
    out.append("")
  return out


def _tree_rows(tree: dict[str, Any], peak: float) -> list[list[Any]]:
  """One row per variant and implementation of a tree section (TREE_COLUMNS)."""
  table = []
  for vname, impls in tree["variants"].items():
    ref = impls["optax"]
    for impl in (i for i in (*IMPLS, PAIRED_TRIAD) if i in impls):
      r = impls[impl]
      gbs = _gbs(r["bytes"], r["best_s"])
      hlo = r.get("hlo_bytes")
      table.append(
        [
          vname,
          impl,
          f"{r['bytes'] / tree['n_params']:.0f}",
          f"{hlo / tree['n_params']:.0f}" if hlo else "",
          r.get("hlo_ops", ""),
          _ms(r["best_s"]),
          _ms(r["median_s"]),
          f"{gbs:.1f}",
          f"{gbs / peak:.0%}" if peak else "n/a",
          f"{r['best_s'] / ref['best_s']:.2f}; {r['median_s'] / ref['median_s']:.2f}",
          r["n"],
        ]
      )
  return table


def _states_part(states: Any) -> list[str]:
  """Bytes per parameter per state mode, then each mode's step time."""
  if not _ok(states):
    return []
  modes = list(next(iter(states["memory"].values()), {}))
  out = [
    "",
    "## Optimizer state memory",
    "",
    f"Bytes per parameter of the state from `tx.init` on the "
    f"{states['memory_tree']} tree ({states['memory_n_params']:,} params): "
    "the non-scalar arrays' `nbytes` (the int32 step counter left out) / "
    "n_params. bfloat16: nu/mu/momentum_dtype='bfloat16'; 8bit nu: "
    "`nu_quantization='8bit'` (1 byte per element plus one float32 maximum "
    "per 256-element block of each leaf, the last block padded; mu and "
    "momentum float32); optax: float32 (no dtype option). n/a: this "
    "optax_rms has no such option.",
    "",
  ]
  out += md_table(
    ["variant"] + modes,
    [
      [vname] + [_bpp(row[mode]) for mode in modes]
      for vname, row in states["memory"].items()
    ],
  )
  out += [
    "",
    f"Step time per state mode ({states['timing_tree']}, float32 params, "
    "jitted and donated as above; GB/s from each mode's own bytes; vs = time "
    "/ ours float32's):",
    "",
  ]
  header = ["variant", "state", "B/param", "HLO B/param", "best ms", "median ms"]
  return out + md_table([*header, "GB/s", "vs", "N"], _state_time_rows(states))


def _state_time_rows(states: dict[str, Any]) -> list[list[Any]]:
  table = []
  n = states["timing_n_params"]
  for vname, impls in states["timing"].items():
    base = impls.get("ours float32")
    for name, r in impls.items():
      if isinstance(r, str):
        table.append([vname, name] + ["n/a"] * 6 + [r[:80]])
        continue
      table.append(
        [
          vname,
          name,
          f"{r['bytes'] / n:.1f}",
          f"{r['hlo_bytes'] / n:.1f}" if "hlo_bytes" in r else "?",
          _ms(r["best_s"]),
          _ms(r["median_s"]),
          f"{_gbs(r['bytes'], r['best_s']):.1f}",
          f"{r['best_s'] / base['best_s']:.2f}" if isinstance(base, dict) else "",
          r["n"],
        ]
      )
  return table


COMPILE_COLUMNS = [
  "variant",
  "impl",
  "lower s",
  "compile s",
  "total s",
  "total median s",
  "vs optax",
  "StableHLO ops",
  "HLO ops",
  "fusions",
  "N",
]


def _compile_part(comp: Any) -> list[str]:
  if not _ok(comp):
    return []
  out = [
    "",
    "## Compile time of the jitted step",
    "",
    f"{comp['tree']}; `jax.clear_caches()` before each; lower = trace + lower "
    "to StableHLO (`jax.jit(step).lower(...)`), compile = XLA "
    "(`.compile()`). Best of N, the implementations alternated. "
    "`optax.flatten(ours)`: one concatenation of every leaf, which XLA "
    "compiles slowly; `pack_small(ours)` bounds each to 32 leaves. "
    "StableHLO ops: "
    "lines with a result in `lowered.as_text()`; HLO ops and fusions: the "
    "ENTRY computation of `compiled.as_text()`.",
    "",
  ]
  table = []
  for vname, impls in comp.items():
    if not isinstance(impls, dict):
      continue
    for name, r in impls.items():
      table.append(
        [
          vname,
          name,
          f"{r['lower_best_s']:.2f}",
          f"{r['compile_best_s']:.2f}",
          f"{r['total_best_s']:.2f}",
          f"{r['total_median_s']:.2f}",
          f"{r['total_best_s'] / impls['optax']['total_best_s']:.2f}",
          r["stablehlo_ops"],
          r["entry_instructions"],
          r["entry_fusions"],
          r["n"],
        ]
      )
  return out + md_table(COMPILE_COLUMNS, table)


EAGER_COLUMNS = [
  "variant",
  "impl",
  "best ms",
  "median ms",
  "speedup vs optax",
  "max|Δ|/max|ref|",
  "bit-identical elements",
  "N",
]


def _eager_part(eager: Any) -> list[str]:
  if not _ok(eager):
    return []
  out = [
    "",
    "## Eager update (no jit)",
    "",
    f"{eager['tree']}; `jax.block_until_ready(tx.update(grads, state, "
    "params))`, alternated; agreement: three chained eager steps from the "
    "same start (three different gradients), last updates and params "
    "compared leaf by leaf: max|ours - optax| / max|optax|. optax runs op by "
    "op and ours as one XLA computation, so rsqrt and fused arithmetic may "
    "round differently in the last bits.",
    "",
  ]
  table = []
  for vname, row in eager.items():
    if not isinstance(row, dict):
      continue
    for name in ("ours", "optax"):
      r = row[name]
      table.append(
        [
          vname,
          name,
          _ms(r["best_s"]),
          _ms(r["median_s"]),
          f"{row['optax']['best_s'] / r['best_s']:.1f}",
          f"{row['max_rel_diff']:.1e}" if name == "ours" else "",
          f"{row['equal_fraction']:.0%}" if name == "ours" else "",
          r["n"],
        ]
      )
  return out + md_table(EAGER_COLUMNS, table)


def _bpp(value: Any) -> str:
  return f"{value:.3f}" if isinstance(value, float) else str(value)[:60]


CHART_TOP = 4.0  # ratios above this are clipped (and printed on the bar)


def chart(results: dict[str, Any], path: pathlib.Path) -> bool:
  """Step time relative to optax per tree and variant, one bar per
  implementation, the ours/optax target as a line; False without matplotlib
  or without a tree section to draw."""
  try:
    import matplotlib
  except ImportError:
    return False
  tree_secs = _tree_sections(results)
  if not tree_secs:
    return False
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import FuncFormatter

  fig, axes = plt.subplots(
    1, len(tree_secs), figsize=(4.2 * len(tree_secs), 4.6), squeeze=False
  )
  colors = {
    "ours": "#1f77b4",
    "ours bf16 state": "#9ecae1",
    PACKED: "#6baed6",
    FLATTENED: "#17becf",
    "optax": "#ff7f0e",
    "torch foreach": "#2ca02c",
    "torch single": "#7f7f7f",
  }
  handles = {}
  for ax, tree in zip(axes[0], tree_secs, strict=True):
    variants = list(tree["variants"])
    present = [i for i in IMPLS if any(i in v for v in tree["variants"].values())]
    width = 0.8 / len(present)
    for i, impl in enumerate(present):
      xs, ys = [], []
      for j, vname in enumerate(variants):
        impls = tree["variants"][vname]
        if impl in impls:
          xs.append(j + (i - (len(present) - 1) / 2) * width)
          ys.append(impls[impl]["best_s"] / impls["optax"]["best_s"])
      clipped = [min(y, CHART_TOP) for y in ys]
      handles[impl] = ax.bar(xs, clipped, width, color=colors[impl])
      for x, y in zip(xs, ys, strict=True):
        if y > CHART_TOP:  # clipped: print the ratio on the bar
          ax.text(x, CHART_TOP, f"{y:.0f}x", ha="center", va="bottom", fontsize=7)
    handles["ours/optax target"] = ax.axhline(
      STEP_RATIO_MAX, color="#d62728", linestyle="--", linewidth=1
    )
    ax.set_ylim(0, CHART_TOP * 1.08)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}x"))
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels([v.replace("+", "+\n") for v in variants], fontsize=8)
    ms = tree["variants"][variants[0]]["optax"]["best_s"] * 1e3
    ax.set_title(
      f"{tree['name']}: {tree['n_params'] / 1e6:.1f}M params, "
      f"{tree['n_leaves']} leaves,\n{tree['dtype']}; optax {variants[0]} "
      f"{ms:.3g} ms",
      fontsize=9,
    )
    ax.grid(axis="y", which="major", alpha=0.3)
  axes[0][0].set_ylabel("step time / optax's (best of N; lower is faster)")
  order = [k for k in (*IMPLS, "ours/optax target") if k in handles]
  fig.legend(
    [handles[k] for k in order],
    order,
    loc="lower center",
    ncol=len(handles),
    fontsize=8,
    frameon=False,
  )
  m = results["machine"]
  where = m["cpu"].split(" (")[0] + f", {m['cores']} cores"
  if m["platform"] != "cpu":
    where = f"{m['device']}; torch: {m['torch_device']}"
  fig.suptitle(
    f"RMSprop step: optax_rms vs optax vs torch.optim.RMSprop "
    f"({where}, jax {m['jax']}, torch {m['torch']}, scale {results['scale']})",
    fontsize=10,
  )
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True
