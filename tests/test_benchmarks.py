"""Smoke test of the step benchmark (benchmarks/step/: run.py, report.py).

Runs the suite's "tiny" scale in-process on a subset that still reaches every
section and every variant, renders RESULTS.md and the chart into tmp_path, and
checks what the report is built from: the rows, the bytes model, the state
sizes, the eager agreement with optax and the target table. Timings at this
scale mean nothing and are not checked.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import pathlib
import re
import sys
import time

import jax
import jax.numpy as jnp
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECTIONS = [
  "roofline",
  "tree:one_big_leaf",
  "tree:many_small",
  "tree:bf16_big_leaf",
  "states",
  "compile",
  "eager",
]
# Bytes a step must move per param: params read+written, grads read, each
# state array read+written. float32 params and state, then bfloat16 params
# with float32 state (ours on the bf16 tree) and with bfloat16 state.
F32 = {"plain": 20, "centered": 28, "momentum": 28, "centered+momentum": 36}
BF16_F32_STATE = {"plain": 14, "centered": 22, "momentum": 22, "centered+momentum": 30}
BF16 = {"plain": 10, "centered": 14, "momentum": 14, "centered+momentum": 18}


def _import(name: str):
  sys.path.insert(0, str(ROOT))
  try:
    return importlib.import_module(name)
  finally:
    sys.path.remove(str(ROOT))


@pytest.fixture(scope="module")
def bench():
  return _import("benchmarks.step.run")


@pytest.fixture(scope="module")
def report():
  return _import("benchmarks.step.report")


@pytest.fixture(scope="module")
def results(bench):
  return bench.run_suite("tiny", sections=SECTIONS, log=lambda _: None)


def _trees(results):
  return {k[5:]: v for k, v in results["sections"].items() if k.startswith("tree:")}


def test_every_section_ran(bench, results):
  assert set(results["sections"]) == set(SECTIONS) | {"roofline_end"}
  for name, sec in results["sections"].items():
    assert "error" not in sec, (name, sec)
  assert results["variants"] == list(bench.VARIANTS)
  for key in ("cpu", "platform", "device", "jax", "optax", "torch_device"):
    assert results["machine"][key]


def test_tree_rows_and_bytes_model(bench, results):
  trees = _trees(results)
  assert set(trees) == {"one_big_leaf", "many_small", "bf16_big_leaf"}
  for name, tree in trees.items():
    assert list(tree["variants"]) == list(bench.VARIANTS)
    n = tree["n_params"]
    for vname, impls in tree["variants"].items():
      expected = {"ours", "optax"} | ({"ours bf16 state"} if "bf16" in name else set())
      if name == "many_small":
        expected |= {bench.FLATTENED, bench.PACKED}
      if name == "one_big_leaf":  # the ceiling, timed in the same rounds
        expected.add(bench.PAIRED_TRIAD)
        assert impls[bench.PAIRED_TRIAD]["bytes"] == 12 * n
      assert expected <= set(impls), (name, vname, set(impls))
      for impl, row in impls.items():
        assert 0 < row["best_s"] <= row["median_s"], (name, vname, impl)
        assert row["n"] >= 1
        if "hlo_bytes" in row:  # JAX rows: the compiled step moves no less
          assert row["hlo_bytes"] >= row["bytes"], (name, vname, impl)
      if name == "bf16_big_leaf":
        assert impls["ours"]["bytes"] == BF16_F32_STATE[vname] * n
        assert impls["ours bf16 state"]["bytes"] == BF16[vname] * n
        assert impls["optax"]["bytes"] == BF16[vname] * n
      else:
        assert impls["ours"]["bytes"] == impls["optax"]["bytes"] == F32[vname] * n
      for impl in ("ours", "optax", bench.FLATTENED, bench.PACKED):
        if impl in impls:  # every JAX row counts its compiled operations
          assert impls[impl]["hlo_ops"] >= 1, (name, vname, impl)
      if name == "many_small":  # leafwise: at least one operation per leaf
        # XLA:CPU has no multi-output fusion: a loop for the state and one for
        # the params, per leaf. XLA:GPU writes both from one kernel.
        per_leaf = 2 if results["machine"]["platform"] == "cpu" else 1
        leaves = tree["n_leaves"]
        assert impls["ours"]["hlo_ops"] >= per_leaf * leaves
        assert impls[bench.PACKED]["hlo_ops"] < impls["ours"]["hlo_ops"]
      for flat in (bench.FLATTENED, bench.PACKED):
        if flat in impls:  # packed state: the same bytes, no HLO model
          assert impls[flat]["bytes"] == F32[vname] * n
          assert "hlo_bytes" not in impls[flat]


def test_torch_rows(results):
  pytest.importorskip("torch", reason="torch rows need torch")
  if results["machine"]["platform"] != "cpu":
    pytest.skip("torch rows are left out unless torch runs beside JAX")
  for name, tree in _trees(results).items():
    table = BF16 if tree["dtype"] == "bfloat16" else F32
    for vname, impls in tree["variants"].items():
      for impl in ("torch foreach", "torch single"):
        assert impls[impl]["bytes"] == table[vname] * tree["n_params"], (name, impl)


def test_state_bytes_per_param(bench, results):
  states = results["sections"]["states"]
  memory = states["memory"]
  assert list(memory) == list(bench.VARIANTS)
  shapes = bench.trees(bench.SCALES["tiny"])[states["memory_tree"]].shapes
  sizes = [math.prod(s) for s in shapes.values()]
  n = sum(sizes)
  assert n == states["memory_n_params"]
  # 8-bit nu: one uint8 code per element plus one float32 maximum per block of
  # 256 elements of each leaf, the last block padded.
  eight_bit = sum(s + 4 * max(1, math.ceil(s / 256)) for s in sizes) / n
  assert 1.0 < eight_bit < 1.1
  buffers = {"plain": 0, "centered": 1, "momentum": 1, "centered+momentum": 2}
  for vname, row in memory.items():
    k = buffers[vname]
    assert row["float32"] == 4.0 * (1 + k), vname
    assert row["bfloat16"] == 2.0 * (1 + k), vname
    assert row["8bit nu"] == pytest.approx(eight_bit + 4.0 * k), vname
    assert row["8bit nu + bf16 buffers"] == pytest.approx(eight_bit + 2.0 * k)
    assert row["optax"] == row["float32"], vname
  for vname, impls in states["timing"].items():
    for name in ("ours float32", "ours bfloat16", "ours 8bit nu", "optax float32"):
      assert isinstance(impls[name], dict), (vname, name, impls[name])


def test_compile_and_eager(bench, report, results):
  both = [v for v in bench.VARIANTS if v in bench.COMPILE_VARIANTS]
  comp, eager = results["sections"]["compile"], results["sections"]["eager"]
  for vname in both:
    assert set(comp[vname]) == {"ours", "optax", bench.PACKED, bench.FLATTENED}
    for impl in comp[vname]:
      row = comp[vname][impl]
      assert row["total_best_s"] > 0 and row["entry_fusions"] > 0
      assert row["stablehlo_ops"] > 0
    row = eager[vname]
    assert row["max_rel_diff"] <= report.EAGER_REL_DIFF_MAX, (vname, row)
    assert 0 < row["equal_fraction"] <= 1


def test_target_sections_are_the_benchmarks_sections(bench, report):
  names = set(bench.section_names()) - {"roofline", "states"}
  assert set(report.TARGET_SECTIONS) == names
  for name in (bench.FLATTENED, bench.PACKED):
    assert getattr(report, "FLATTENED" if "flatten" in name else "PACKED") == name
    assert name in report.IMPLS
  assert report.PAIRED_TRIAD == bench.PAIRED_TRIAD


def test_targets(report, results):
  rows = report.targets(results)
  assert rows and all(met in (True, False, None) for *_, met in rows)
  kinds = {
    "step ours/optax": 3 * 4,  # three trees, four variants
    ">= 80% of roofline": 4,
    "faster than torch foreach": 3 * 4,
    "eager update": 2,
    "eager result": 2,
    "compile ours/optax": 1,
    "targets of section": 3,  # the three trees SECTIONS leaves out
  }
  for prefix, count in kinds.items():
    assert sum(name.startswith(prefix) for name, *_ in rows) == count, prefix
  assert len(rows) == sum(kinds.values())
  # Measured and compared, whatever the (meaningless) tiny timings say.
  for name, measured, met in rows:
    if name.startswith(("step", ">=", "eager", "compile")):
      assert met is not None, (name, measured)
    if name.startswith("eager result"):
      assert met is True, (name, measured)
  roof = [m for name, m, _ in rows if name.startswith(">=")]
  assert all("in-place triad timed beside it" in m for m in roof)
  bf16 = [m for name, m, _ in rows if name.startswith("step") and "bf16" in name]
  assert all("ours moves" in m and "like-for-like" in m for m in bf16)
  summary = report.target_summary(results)
  assert summary.startswith("targets: ")


def test_torch_and_compile_targets_read_the_faster_of_ours_and_packed(
  bench, report, results
):
  """Judged on the faster optax_rms layout, both figures printed."""
  results = copy.deepcopy(results)
  impls = _trees(results)["many_small"]["variants"]["plain"]
  comp = results["sections"]["compile"]["centered+momentum"]
  impls["torch foreach"] = {**impls["ours"], "best_s": 1.0}
  comp["optax"]["total_best_s"] = 1.0

  def row(prefix):
    (match,) = [r for r in report.targets(results) if r[0].startswith(prefix)]
    return match

  torch_row = "faster than torch foreach: many_small, plain"
  for ours, packed, met in ((2.0, 0.5, True), (0.5, 2.0, True), (2.0, 3.0, False)):
    impls["ours"]["best_s"], impls[bench.PACKED]["best_s"] = ours, packed
    comp["ours"]["total_best_s"], comp[bench.PACKED]["total_best_s"] = ours, packed
    for prefix in (torch_row, "compile ours/optax"):
      name, measured, status = row(prefix)
      assert status is met, (name, measured)
      assert "ours: " in measured and f"{bench.PACKED}: " in measured


def _table_widths(markdown: str) -> list[tuple[int, int]]:
  """(header cells, row cells) for each table row; escaped pipes don't split."""
  out, header = [], None
  for line in markdown.splitlines():
    if not line.startswith("|"):
      header = None
      continue
    cells = len(re.split(r"(?<!\\)\|", line)) - 2
    if header is None:
      header = cells
    out.append((header, cells))
  return out


def test_render_markdown_and_chart(report, results, tmp_path):
  markdown = report.render(results, command="pytest")
  (tmp_path / "RESULTS.md").write_text(markdown)
  assert "## Targets:" in markdown and "## Bandwidth roofline" in markdown
  assert "## Train step" in markdown and "train_step.md" in markdown
  for heading in ("Optimizer state memory", "Compile time", "Eager update"):
    assert f"## {heading}" in markdown
  assert results["machine"]["cpu"] in markdown
  assert "indicative only" in markdown  # not the full scale
  for impl in ("ours", "ours bf16 state", "optax"):
    assert f"| {impl} |" in markdown
  if "torch foreach" in _trees(results)["many_small"]["variants"]["plain"]:
    assert "| torch foreach |" in markdown and "| torch single |" in markdown
  assert "MET" in markdown or "MISSED" in markdown
  widths = _table_widths(markdown)
  assert widths and all(h == c for h, c in widths)

  png = tmp_path / "results.png"
  pytest.importorskip("matplotlib", reason="the chart needs matplotlib")
  assert report.chart(results, png)
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_line_subset(bench, report, tmp_path, capsys):
  # `report` imported: main() imports it where a report is made.
  out = tmp_path / "RESULTS.md"
  bench.main(
    ["--scale", "tiny", "--sections", "roofline", "--variants", "plain"]
    + ["--out", str(out), "--json", str(tmp_path / "r.json")]
  )
  text = out.read_text()
  assert "--sections roofline --variants plain" in text
  assert "## Bandwidth roofline" in text and "## Jitted step" not in text
  assert "targets: 0 MET, 0 MISSED" in capsys.readouterr().out
  assert not (tmp_path / "results.png").exists()  # no tree section: no chart
  with pytest.raises(SystemExit):
    bench.main(["--scale", "tiny", "--sections", "tree:nope"])


def test_hlo_traffic_counts_each_pass(bench):
  x = jax.ShapeDtypeStruct((1000,), jnp.float32)
  one_pass = jax.jit(lambda a, b: a * 2 + b).lower(x, x).compile().as_text()
  assert bench.hlo_traffic(one_pass) == 3 * 4000  # read a, b; write the sum


def test_failed_child_section_is_recorded(bench):
  data = bench._run_child("no-such-section", "tiny", ["plain"])
  assert "unknown section" in data["error"]


def test_accelerator_samples_average_back_to_back_steps(bench):
  """On an accelerator a sample is m steps queued back to back, only the last
  waited for (benchmarks/step/run.py: default_min_sample_s); on the CPU, one
  waited step."""
  calls: list[bool] = []

  def step(block=True):
    calls.append(block)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 1e-4:  # a 0.1 ms "step"
      pass

  scale = bench.SCALES["quick"]
  samples, per_sample = bench.alternate({"a": step}, scale, min_sample_s=2e-3)
  m = per_sample["a"]
  assert 2 <= m <= 20  # ~2 ms / 0.1 ms, less when the host is slow
  timed = calls[9:]  # after the warm-up: 1 call, then twice 4 queued
  # Per round: one waited untimed step, then samples of m calls, the last waited.
  assert timed.count(False) == len(samples["a"]) * (m - 1)
  assert timed.count(True) == scale.rounds + len(samples["a"])
  assert all(s >= 1e-4 for s in samples["a"])  # per step, not per sample
  if jax.devices()[0].platform == "cpu":
    calls.clear()
    _, per_sample = bench.alternate({"a": step}, scale)
    assert per_sample == {"a": 1} and all(calls[9:])


def test_compile_reps_flag(bench, report, tmp_path):
  out = tmp_path / "r.json"
  bench.main(
    ["--scale", "tiny", "--sections", "compile", "--variants", "plain"]
    + ["--compile-reps", "2", "--json", str(out), "--out", str(tmp_path / "R.md")]
  )
  rows = json.loads(out.read_text())["sections"]["compile"]["plain"]
  assert {row["n"] for row in rows.values()} == {2}
  assert "--compile-reps 2" in (tmp_path / "R.md").read_text()
  with pytest.raises(SystemExit):
    bench.main(["--scale", "tiny", "--sections", "compile", "--compile-reps", "0"])


def test_gpu_kernels_counts_busy_time_as_the_union():
  """benchmarks/studies/gpu_kernels.py: busy = the union of the kernels'
  intervals (concurrent kernels count once), per step; the top kernels by
  summed time."""
  stats = _import("benchmarks.studies.gpu_kernels").kernel_stats(
    [("b", 5.0, 12.0), ("a", 0.0, 10.0), ("a", 20.0, 25.0), ("c", 21.0, 22.0)],
    steps=2,
  )
  assert stats["kernels"] == 2.0
  assert stats["kernel_us"] == (10 + 7 + 5 + 1) / 2
  assert stats["busy_us"] == (12 + 5) / 2
  assert stats["top"] == [("a", 7.5), ("b", 3.5), ("c", 0.5)]
