"""Smoke tests: every example runs end to end (few steps)."""

import pathlib
import runpy

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_runs_and_matches_optax(capsys):
  module = runpy.run_path(str(EXAMPLES / "quickstart.py"))
  module["main"](steps=20)
  out = capsys.readouterr().out
  ours = float(out.split("optax_rms.rmsprop final loss:")[1].split()[0])
  ref = float(out.split("optax.rmsprop     final loss:")[1].split()[0])
  assert ours == ref
  assert "PyTorch-style variant final loss" in out


def test_readme_quickstart_block_runs(capsys):
  readme = (EXAMPLES.parent / "README.md").read_text()
  block = readme.split("## Quickstart")[1].split("```python")[1].split("```")[0]
  exec(compile(block, "README.md", "exec"), {})
  loss = float(capsys.readouterr().out.split("loss")[1])
  assert loss < 1e-3


def test_linear_regression_prints_its_comparison_with_mxnet(capsys, monkeypatch):
  """The default run compares with MXNet's golden run (not only --check-golden)."""
  module = runpy.run_path(str(EXAMPLES / "linear_regression.py"))
  worst = module["main"]([])
  out = capsys.readouterr().out
  assert "MXNet RMSProp" in out and "w = " in out and ", MXNet: " in out
  assert worst is not None and worst <= module["RTOL"]
  printed = float(
    out.split("max relative difference from MXNet (losses, w, b): ")[1][:7]
  )
  assert printed == float(f"{worst:.1e}")
  assert f"agrees to rtol {module['RTOL']:g}" in out
  # --check-golden fails the run when it does not agree (here: rtol 0).
  monkeypatch.setitem(module["main"].__globals__, "RTOL", 0.0)
  with pytest.raises(SystemExit) as exit_info:
    module["main"](["--check-golden"])
  assert exit_info.value.code == 1
  assert "DOES NOT agree" in capsys.readouterr().out
