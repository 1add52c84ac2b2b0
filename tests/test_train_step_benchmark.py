"""Smoke test of the train-step benchmark (benchmarks/train_step/).

Runs its quick scale in-process on the many-leaves MLP and the update alone
(the two fastest tables), renders the report, and checks what the report is
built from: every available row measured, positive memory figures, and the
float32-state row's state size against optax.rmsprop's own state. Timings at
this scale mean nothing and are not checked.
"""

from __future__ import annotations

import importlib
import pathlib
import sys

import jax
import numpy as np
import optax
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TABLES = ["mlp_many_leaves", "one_leaf"]


def _import(name: str):
  sys.path.insert(0, str(ROOT))
  try:
    return importlib.import_module(name)
  finally:
    sys.path.remove(str(ROOT))


@pytest.fixture(scope="module")
def ts():
  return _import("benchmarks.train_step.run")


@pytest.fixture(scope="module")
def results(ts):
  return ts.run_suite("quick", tables=TABLES, log=lambda _: None)


def _tables(results):
  sections = results["sections"].values()
  return {t["name"]: t for tables in sections for t in tables.values()}


def test_every_available_row_is_measured(ts, results):
  rows = _import("benchmarks.train_step.rows")
  ok, absent = rows.available()
  assert {r.name for r in ok} >= {"optax.rmsprop", "ours plain, 8bit nu", "optax.sgd"}
  tables = _tables(results)
  assert set(tables) == set(TABLES)
  for name, table in tables.items():
    assert list(table["rows"]) == [r.name for r in ok], name
    assert table["absent"] == absent
    for rname, row in table["rows"].items():
      assert "error" not in row, (name, rname, row)
      mem = row["memory"]
      assert mem["argument"] > 0 and mem["peak"] > 0 and mem["temp"] >= 0
      param_bytes = 2 if row["params"] == "bfloat16" else 4
      assert mem["peak"] >= table["n_params"] * param_bytes
      assert row["state_bytes"] >= 0
      assert 0 < row["timing"]["best_s"] <= row["timing"]["median_s"]
      assert row["device_peak"] is None or row["device_peak"] > 0
    assert table["rows"]["optax.sgd"]["state_bytes"] == 0


def test_float32_state_bytes_are_optax_rmsprops(results):
  """State bytes at rest of ours' float32 row: those of optax.rmsprop's state
  on the same parameters (4 B/param), computed from the states."""
  models = _import("benchmarks.train_step.models")
  from flax import nnx

  spec = {m.name: m for m in models.scales()["quick"].models}["mlp_many_leaves"]
  params = nnx.split(spec.build(), nnx.Param, ...)[1]
  state = optax.rmsprop(1e-3).init(params)
  expected = sum(x.nbytes for x in jax.tree.leaves(state) if np.ndim(x) > 0)
  table = _tables(results)["mlp_many_leaves"]
  n = table["n_params"]
  assert n == sum(x.size for x in jax.tree.leaves(params))
  assert table["rows"]["ours plain, float32"]["state_bytes"] == expected
  assert table["rows"]["optax.rmsprop"]["state_bytes"] == expected
  assert expected / n == 4.0
  assert table["rows"]["ours c+m, float32"]["state_bytes"] == 3 * expected
  assert table["rows"]["ours plain, bfloat16"]["state_bytes"] == expected // 2
  # The update alone on one float32 leaf, state donated: nothing beyond params,
  # state and gradients is live with float32 state (XLA's own analysis).
  leaf = _tables(results)["one_leaf"]
  assert leaf["rows"]["optax.sgd"]["memory"]["temp"] == 0


def test_report_has_rows_and_targets(ts, results):
  report = _import("benchmarks.train_step.report")
  markdown = report.render(results, command="pytest")
  assert "## Targets:" in markdown and "## Whole train step" in markdown
  assert "## Update alone" in markdown and "tiny models" in markdown
  for table in _tables(results).values():
    assert f"### {table['name']}: " in markdown
    for name in table["rows"]:
      assert f"| {name} |" in markdown
    for name in table["absent"]:
      assert f"`{name}`" in markdown
  rows = report.targets(results)
  names = [name for name, _, _ in rows]
  for where in ("mlp_many_leaves", "update alone, one_leaf"):
    for variant in ("plain", "c+m"):
      target = f"8bit nu peak >= 2.5 B/param below float32 state: {where}, {variant}"
      assert target in names
  nu8 = [r for r in rows if r[0].startswith("8bit nu peak")]
  assert nu8 and all(met is not None for *_, met in nu8)  # measured, MET or not
  assert sum(n.startswith("all three 8bit") for n in names) == 2  # MLP only
  gpu = [r for r in rows if r[0].startswith("on a GPU")]
  assert gpu and all(
    (met is None) == (results["machine"]["platform"] != "gpu") for *_, met in gpu
  )
  assert report.target_summary(results).startswith("targets: ")


def test_rows_missing_a_keyword_are_skipped_not_failed():
  rows = _import("benchmarks.train_step.rows")
  fake = rows.Row("x", "plain", "float32", lambda: optax.sgd(1.0), needs=("nope_kw",))
  assert rows.missing(fake) == ["nope_kw"]
  ok, absent = rows.available((fake, rows.ROWS[0]))
  assert [r.name for r in ok] == [rows.ROWS[0].name] and absent == {"x": ["nope_kw"]}


def test_interleave_records_a_failing_row():
  harness = _import("benchmarks.train_step.harness")
  built = []

  def good():
    built.append("good")
    return lambda: None

  def bad():
    raise ValueError("boom")

  out = harness.interleave({"good": good, "bad": bad}, rounds=2, samples=3)
  assert out["good"]["n"] == 6 and built == ["good", "good"]  # rebuilt per round
  assert "boom" in out["bad"]["error"]


def test_merge_of_separate_runs(ts, results):
  a = {**results, "sections": {"train_step": results["sections"]["train_step"]}}
  b = {**results, "sections": {"update_alone": results["sections"]["update_alone"]}}
  merged = ts.merge([a, b])
  assert _tables(merged).keys() == _tables(results).keys()
  assert merged["runtime_s"] == 2 * results["runtime_s"]


def test_cpu_scheduler_script_compiles_every_row_under_both_schedulers(tmp_path):
  """benchmarks/studies/cpu_scheduler.py on the quick MLP: one child process per
  scheduler, every row measured, and the report says which target is met."""
  cpu_scheduler = _import("benchmarks.studies.cpu_scheduler")
  results = cpu_scheduler.measure("quick", ["mlp_many_leaves"])
  assert list(results) == list(cpu_scheduler.SCHEDULERS)
  for per_model in results.values():
    assert list(per_model) == ["mlp_many_leaves"]
    for rows in per_model.values():
      assert list(rows) == list(cpu_scheduler.ROWS)
      for r in rows.values():
        assert r["peak"] > r["temp"] >= 0
  # The flag reached the children: the two schedulers lay out at least one
  # step differently.
  a, b = results.values()
  assert a != b
  text = cpu_scheduler.report(results, "quick")
  assert text.count("MET") + text.count("MISSED") == 2 * 2
