"""Smoke tests: every example runs end to end (few steps)."""

import pathlib
import runpy

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
