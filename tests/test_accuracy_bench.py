"""Smoke test of benchmarks/accuracy/ (tiny scale; figures not checked)."""

from __future__ import annotations

import importlib
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def acc():
  sys.path.insert(0, str(ROOT))
  try:
    return importlib.import_module("benchmarks.accuracy.run")
  finally:
    sys.path.remove(str(ROOT))


def test_every_section_runs_and_a_later_run_adds_rows(acc, tmp_path):
  pytest.importorskip("sklearn")
  files = ["--json", str(tmp_path / "a.json"), "--out", str(tmp_path / "a.md")]
  acc.main(
    ["--seeds", "1", "--digits-epochs", "1", "--digits-variants", "plain"]
    + ["--lm-steps", "3", "--lm-tiny", "--trajectory-steps", "20"]
    + ["--states", "float32", "8bit-nu"] + files
  )  # fmt: skip
  recorded = json.loads((tmp_path / "a.json").read_text())["sections"]
  assert set(recorded) == {"digits", "lm", "trajectory"}
  for section in ("digits", "lm"):
    rows = {r["state"]: r for r in recorded[section]["rows"]}
    assert set(rows) == {"float32", "8bit-nu"}
    assert rows["8bit-nu"]["kwargs"]["nu_quantization"] == "8bit"
  assert 0 <= recorded["digits"]["rows"][0]["test_accuracy"][0] <= 1
  traj = {(r["config"], r["mode"]): r for r in recorded["trajectory"]["rows"]}
  assert traj["centered+momentum", "8bit-nu"]["finite"]
  assert 0 < traj["centered+momentum", "8bit-nu"]["median"] < 1
  md = (tmp_path / "a.md").read_text()
  for title in ("## Digits", "## Character-level LM", "## Trajectory deviation"):
    assert title in md


def test_a_later_run_replaces_only_its_own_rows(acc):
  def row(state):
    return {"variant": "v", "state": state, "val_loss": [2.0], "train_loss": [2.0],
            "lr": 1e-3, "steps": 3, "seconds": [1.0]}  # fmt: skip

  first = acc.merge(None, [row("float32"), row("8bit-nu")], "run A")
  second = acc.merge(first, [row("8bit-nu"), row("bfloat16")], "run B")
  rows = acc._ordered(second["rows"])
  assert [(r["state"], r["meta"]) for r in rows] == [
    ("float32", "run A"), ("bfloat16", "run B"), ("8bit-nu", "run B")
  ]  # fmt: skip
  md = acc.render({"sections": {"lm": second}})
  assert "| v | float32 (1) |" in md and "| v | 8bit-nu (2) |" in md
  assert "- run 2 (rows marked 2): run B" in md


def test_targets_and_missing_keywords_in_the_report(acc):
  rows = [
    {"variant": "v", "state": "float32", "test_accuracy": [0.98, 0.97, 0.99],
     "test_loss": [0.1] * 3, "seconds": [1.0] * 3, "lr": 1e-3, "meta": "m"},
    {"variant": "v", "state": "8bit-all", "test_accuracy": [0.97, 0.96, 0.98],
     "test_loss": [0.1] * 3, "seconds": [1.0] * 3, "lr": 1e-3, "meta": "m"},
    {"variant": "w", "state": "8bit-all", "skipped": "no mu_quantization",
     "meta": "m"},
  ]  # fmt: skip
  (t,) = acc.digits_targets(rows)
  assert t["diff_points"] == pytest.approx(-1.0) and not t["met"]
  rows[1]["test_accuracy"] = [0.975, 0.97, 0.99]
  assert acc.digits_targets(rows)[0]["met"]
  md = acc.render({"sections": {"digits": {"rows": rows}}})
  assert "| w | 8bit-all | | not measured: no mu_quantization |" in md
  assert "-0.17 points over 3 seeds, **MET**" in md
  lm = [
    {"variant": "v", "state": s, "val_loss": [v], "train_loss": [v], "lr": 3e-4,
     "steps": 10, "seconds": [1.0], "meta": "m"}
    for s, v in (("float32", 2.0), ("8bit-all", 2.03))
  ]  # fmt: skip
  (t,) = acc.lm_targets(lm)
  assert t["relative"] == pytest.approx(0.015) and not t["met"]
