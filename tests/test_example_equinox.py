"""Smoke tests of examples/train_equinox.py (an eqx.Module trained with
optax_rms.rmsprop through eqx.filter_jit)."""

import pathlib
import runpy

import jax
import numpy as np
import optax
import pytest

import optax_rms

eqx = pytest.importorskip("equinox", reason="the examples extra installs equinox")

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples/train_equinox.py"


@pytest.fixture(scope="module")
def example():
  return runpy.run_path(str(EXAMPLE))


def test_filtered_state_holds_the_weights_only(example):
  model = example["CNN"](jax.random.key(0))
  weights = jax.tree.leaves(eqx.filter(model, eqx.is_array))
  state = optax_rms.rmsprop(1e-3).init(eqx.filter(model, eqx.is_array))
  assert [x.shape for x in jax.tree.leaves(state.nu)] == [w.shape for w in weights]
  # 2 convolutions and 2 linear layers, each a weight and a bias.
  assert len(weights) == 8


def test_make_step_matches_optax_rmsprop(example):
  """Three of the example's steps with optax_rms.rmsprop and with
  optax.rmsprop end at the same model, bit for bit (same math, both jitted)."""
  data = example["channels_first"](example["load_data"]())
  idx = example["epoch_batches"](0, 1, len(data["x_train"]), 32)
  models = []
  for optim in (optax_rms.rmsprop(1e-3), optax.rmsprop(1e-3)):
    model = example["CNN"](jax.random.key(0))
    opt_state = optim.init(eqx.filter(model, eqx.is_array))
    for i in range(3):
      x, y = data["x_train"][idx[i]], data["y_train"][idx[i]]
      model, opt_state, _ = example["make_step"](model, opt_state, optim, x, y)
    models.append(jax.tree.leaves(eqx.filter(model, eqx.is_array)))
  start = jax.tree.leaves(eqx.filter(example["CNN"](jax.random.key(0)), eqx.is_array))
  for ours, ref, init in zip(*models, start, strict=True):
    assert not np.array_equal(ours, init)  # the steps moved every weight
    np.testing.assert_array_equal(ours, ref)


def test_main_learns_and_writes_the_plot(example, tmp_path, capsys):
  result = example["main"](["--epochs", "2", "--seed", "1", "--out", str(tmp_path)])
  history = result.history
  assert history["epoch"] == [1, 2]
  assert history["train_loss"][1] < history["train_loss"][0]
  # Two epochs of 44 steps: far above chance (10%), short of the full run's 97%.
  assert result.test_accuracy > 0.85
  out = capsys.readouterr().out
  assert f"test accuracy: {result.test_accuracy:.2%}" in out
  plot = tmp_path / example["PLOT_NAME"]
  assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
