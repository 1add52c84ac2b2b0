"""Smoke tests: every example runs end to end (few steps)."""

import pathlib
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

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


TINY_LM = [
  "--layers", "1", "--d-model", "32", "--heads", "2", "--context", "16",
  "--batch-size", "8", "--max-bytes", "50000", "--eval-windows", "16",
]  # fmt: skip


def test_train_lm_learns_a_few_steps_and_writes_the_plot(tmp_path, capsys):
  lm = runpy.run_path(str(EXAMPLES / "train_lm.py"))
  result = lm["main"](
    TINY_LM + ["--steps", "30", "--eval-every", "10", "--lr", "1e-2"]
    + ["--out", str(tmp_path)]
  )  # fmt: skip
  history = result.history
  assert history["step"] == [0, 10, 20, 30]
  # From ln(256) = 5.5 nats at the start; the bytes of Python source are far
  # from uniform, so even 30 tiny steps cut the held-out loss by a lot.
  assert history["val_loss"][0] > 5.0
  assert history["val_loss"][-1] < 0.8 * history["val_loss"][0]
  out = capsys.readouterr().out
  assert f"validation loss {result.val_loss:.4f}" in out
  assert (tmp_path / lm["PLOT_NAME"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_lm_data_is_the_stdlib_source_split_90_10():
  import os

  lm = runpy.run_path(str(EXAMPLES / "train_lm.py"))
  data = lm["load_data"](10_000)
  assert (len(data["train"]), len(data["val"])) == (9_000, 1_000)
  first = sorted(pathlib.Path(os.path.dirname(os.__file__)).glob("*.py"))[0]
  assert bytes(data["train"][:100]) == first.read_bytes()[:100]
  seqs = lm["batch"](data["train"], 0, 1, 4, 16)
  assert seqs.shape == (4, 17)
  assert (seqs == lm["batch"](data["train"], 0, 1, 4, 16)).all()  # (seed, step)


def test_train_lm_state_modes_and_rounding(tmp_path):
  """Each --state maps to rmsprop's storage keywords for the variant's buffers;
  a mode or rounding this optax_rms cannot do is a clear error, not a crash."""
  import inspect

  import optax_rms

  lm = runpy.run_path(str(EXAMPLES / "train_lm.py"))
  kw = lm["state_kwargs"]
  assert kw("float32", "plain") == {"nu_dtype": "float32"}
  assert kw("bfloat16", "centered-momentum") == {
    "nu_dtype": "bfloat16", "mu_dtype": "bfloat16", "momentum_dtype": "bfloat16"
  }  # fmt: skip
  assert kw("8bit-nu", "centered-momentum") == {
    "nu_quantization": "8bit", "mu_dtype": "float32", "momentum_dtype": "float32"
  }  # fmt: skip
  assert kw("8bit-all", "plain") == {"nu_quantization": "8bit"}
  known = inspect.signature(optax_rms.rmsprop).parameters
  tiny = dict(
    steps=3, layers=1, d_model=16, heads=2, context=8, batch_size=2,
    eval_every=0, n_eval_windows=4, progress=False,
    data=lm["load_data"](20_000),
  )  # fmt: skip
  has_all = "mu_quantization" in known and "momentum_quantization" in known
  if not has_all:
    with pytest.raises(ValueError, match="mu_quantization=.*does not have"):
      kw("8bit-all", "centered-momentum")
  state = "8bit-all" if has_all else "8bit-nu"
  r = lm["train"](variant="centered-momentum", state=state, **tiny)
  assert np.isfinite(r.val_loss)
  s = r.optimizer.opt_state
  eight = (s.nu, s.mu, s.momentum) if has_all else (s.nu,)
  assert all(x.dtype.itemsize == 1 for x in jax.tree.leaves(eight))
  for rounding in ("kahan", "stochastic"):
    name = {"kahan": "kahan_summation", "stochastic": "stochastic_rounding"}
    if hasattr(optax_rms, name[rounding]):
      r = lm["train"](param_dtype="bfloat16", rounding=rounding, **tiny)
      assert np.isfinite(r.val_loss)
      assert all(
        x.dtype == jnp.bfloat16 for x in jax.tree.leaves(nnx.state(r.model, nnx.Param))
      )
    else:
      with pytest.raises(ValueError, match=f"optax_rms.{name[rounding]}"):
        lm["make_optimizer"](rounding=rounding)


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
