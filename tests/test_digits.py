"""The main example, examples/train_digits.py (Flax NNX), and its Linen twin."""

import pathlib
import runpy
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from tolerances import SAME_MATH, assert_close

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits():
  return runpy.run_path(str(EXAMPLES / "train_digits.py"))


@pytest.fixture(scope="module")
def small_data(digits):
  """A slice of the real data: enough for a few steps of every variant."""
  data = digits["load_data"]()
  return {
    "x_train": data["x_train"][:96],
    "y_train": data["y_train"][:96],
    "x_test": data["x_test"][:64],
    "y_test": data["y_test"][:64],
  }


def test_readme_command_reaches_97_percent_and_writes_the_plot(digits, tmp_path):
  """The README's run command, as it runs it (default flags, --out only)."""
  result = digits["main"](["--out", str(tmp_path)])
  assert result.test_accuracy >= 0.97
  png = tmp_path / digits["PLOT_NAME"]
  assert png.read_bytes()[:8] == PNG_MAGIC
  # The loss went down, and the history has one entry per epoch.
  history = result.history
  assert history["epoch"] == list(range(1, digits["EPOCHS"] + 1))
  assert history["train_loss"][-1] < history["train_loss"][0] / 10


def test_every_variant_trains_a_few_steps(digits, small_data, tmp_path):
  for variant in digits["VARIANTS"]:
    first = digits["train"](
      epochs=1, variant=variant, out=tmp_path, data=small_data, progress=False
    )
    second = digits["train"](
      epochs=3, variant=variant, out=tmp_path, data=small_data, progress=False
    )
    losses = second.history["train_loss"]
    assert all(map(jnp.isfinite, losses)), variant
    # Same seed and batches: the first epoch of both runs is the same. Bit for
    # bit on the CPU. XLA:GPU's kernels are not deterministic run to run (its
    # reductions and cuDNN's convolution gradients may sum in another order):
    # on an H200 the two runs' first-epoch losses differed by a few ulps, in a
    # different variant each time the suite ran, so there the same math's
    # rounding tolerance applies.
    if jax.default_backend() == "cpu":
      assert first.history["train_loss"][0] == losses[0], variant
    else:
      assert_close(
        first.history["train_loss"][0], losses[0], SAME_MATH, jnp.float32, variant
      )
    assert losses[-1] < losses[0], (variant, losses)


def test_unknown_variant_is_refused(digits):
  with pytest.raises(ValueError, match="variant must be one of"):
    digits["make_optimizer"]("adam")
  with pytest.raises(SystemExit):  # argparse: invalid choice
    digits["main"](["--variant", "adam"])


def test_help_answers_before_importing_jax():
  """--help is parsed before the heavy imports (it took ~5 s after them).

  Checked by what is imported, not by time: the script runs as __main__ in a
  fresh interpreter, and after argparse's exit no jax, flax or optax module is
  loaded.
  """
  script = EXAMPLES / "train_digits.py"
  probe = (
    "import runpy, sys\n"
    f"sys.argv = [{str(script)!r}, '--help']\n"
    "try:\n"
    f"  runpy.run_path({str(script)!r}, run_name='__main__')\n"
    "except SystemExit as exit:\n"
    "  print('exit code', exit.code)\n"
    "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
    "('jax', 'jaxlib', 'flax', 'optax', 'optax_rms', 'orbax', 'sklearn'))\n"
    "print('heavy modules:', heavy)\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", probe],
    check=True,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert "--checkpoint-every" in result.stdout
  assert "epochs to train" in result.stdout  # --epochs has a help text
  assert "exit code 0" in result.stdout
  assert "heavy modules: []" in result.stdout, result.stdout


def test_default_output_depends_on_the_variant(digits, monkeypatch, tmp_path):
  """Each variant writes to its own directory (pytorch overwrote plain's plot)."""
  plots = {
    v: digits["default_out"](v) / digits["PLOT_NAME"] for v in digits["VARIANTS"]
  }
  assert len(set(plots.values())) == len(plots), plots
  # The README's path for the default run is the default run's.
  readme = (EXAMPLES.parent / "README.md").read_text()
  default = digits["default_out"](None) / digits["PLOT_NAME"]
  assert default == plots["plain"]
  assert f"# -> {default}" in readme
  # The command line without --out writes there, relative to the working dir.
  monkeypatch.chdir(tmp_path)
  digits["main"](["--epochs", "1", "--variant", "pytorch"])
  assert (tmp_path / plots["pytorch"]).read_bytes()[:8] == PNG_MAGIC
  assert not (tmp_path / plots["plain"]).exists()


def _run_example(*args, script="train_digits.py"):
  return subprocess.run(
    [sys.executable, str(EXAMPLES / script), *args],
    check=True,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.parametrize("variant", ["momentum"])
def test_resume_in_a_fresh_process_equals_training_straight(
  digits, tmp_path, variant, capsys
):
  """2 epochs, save, restore in a NEW process, 2 more == 4 epochs straight.

  The momentum variant keeps every buffer a resume could lose (count, nu and
  the momentum trace); batches are a pure function of (seed, epoch).

  CPU only: on an H100 the resumed and the straight run ended ~1e-2 apart
  (params of size ~0.1). The likely cause, not confirmed there: XLA:GPU
  autotunes its convolution and matmul kernels per process and runs float32
  convolutions in TF32 by default, so two processes may round differently,
  and 4 epochs amplify it. Not compared to a tolerance, because no tolerance
  separates that from a lost buffer.
  """
  if jax.default_backend() != "cpu":
    pytest.skip("bitwise resume needs the same kernels in both processes (CPU)")
  out = tmp_path / "resumed"
  # The first 2 epochs here (one fresh process fewer), the restore in a new one.
  first = ["--epochs", "2", "--checkpoint-every", "1", "--variant", variant]
  digits["main"]([*first, "--out", str(out)])
  assert "Resumed" not in capsys.readouterr().out
  second = _run_example("--epochs", "4", "--resume", "--out", str(out))
  assert "Resumed from epoch 2" in second.stdout
  # Restoring the final checkpoint here (nothing left to train) gives the
  # resumed run's parameters and optimizer state.
  resumed = digits["train"](epochs=4, resume=True, out=out, progress=False)
  assert "Resumed from epoch 4" in capsys.readouterr().out
  straight = digits["train"](
    epochs=4, variant=variant, out=tmp_path / "straight", progress=False
  )
  # Same computation in the same binary: equal to float32 rounding.
  flat_resumed = jax.tree.leaves(resumed.params)
  flat_straight = jax.tree.leaves(straight.params)
  assert len(flat_resumed) == len(flat_straight) > 0
  for a, b in zip(flat_resumed, flat_straight, strict=True):
    assert_close(a, b, SAME_MATH, jnp.float32)
  state_resumed = jax.tree.leaves(digits["nnx"].state(resumed.optimizer))
  state_straight = jax.tree.leaves(digits["nnx"].state(straight.optimizer))
  for a, b in zip(state_resumed, state_straight, strict=True):
    assert_close(a, b, SAME_MATH, jnp.float32)
  # The resumed history is the straight run's, epoch for epoch.
  assert resumed.history["epoch"] == [1, 2, 3, 4]
  assert resumed.test_accuracy == pytest.approx(straight.test_accuracy, abs=1e-6)


def test_resume_refuses_another_configuration(digits, small_data, tmp_path):
  digits["train"](
    epochs=1, checkpoint_every=1, out=tmp_path, data=small_data, progress=False
  )
  with pytest.raises(ValueError, match="was trained with"):
    digits["train"](
      epochs=2,
      variant="centered",
      resume=True,
      out=tmp_path,
      data=small_data,
      progress=False,
    )
  with pytest.raises(FileExistsError, match="--resume"):
    digits["train"](
      epochs=2, checkpoint_every=1, out=tmp_path, data=small_data, progress=False
    )


def test_linen_example_trains_with_a_train_state(tmp_path, capsys):
  linen = runpy.run_path(str(EXAMPLES / "train_digits_linen.py"))
  result = linen["main"](
    ["--epochs", "3", "--variant", "mxnet", "--out", str(tmp_path)]
  )
  history = result["history"]
  assert history["epoch"] == [1, 2, 3]
  assert history["train_loss"][-1] < history["train_loss"][0]
  assert history["test_accuracy"][-1] > 0.9  # 10 classes: chance is 0.1
  # TrainState.apply_gradients ran optax_rms (MXNet preset: chain state).
  n_train = len(linen["load_data"]()["x_train"])
  assert int(result["state"].step) == 3 * (n_train // linen["BATCH_SIZE"])
  assert (tmp_path / linen["PLOT_NAME"]).read_bytes()[:8] == PNG_MAGIC
  assert "test accuracy" in capsys.readouterr().out


def test_linen_resume_in_a_fresh_process_equals_training_straight(tmp_path, capsys):
  """The Linen example's --checkpoint-every / --resume, as the NNX test above.

  CPU only, for the reason given there.
  """
  if jax.default_backend() != "cpu":
    pytest.skip("bitwise resume needs the same kernels in both processes (CPU)")
  linen = runpy.run_path(str(EXAMPLES / "train_digits_linen.py"))
  out = tmp_path / "resumed"
  common = ["--out", str(out)]
  # The first 2 epochs here (one fresh process fewer), the restore in a new one.
  linen["main"](
    ["--epochs", "2", "--checkpoint-every", "1", "--variant", "momentum", *common]
  )
  assert "Resumed" not in capsys.readouterr().out
  second = _run_example(
    "--epochs", "4", "--resume", *common, script="train_digits_linen.py"
  )
  assert "Resumed from epoch 2" in second.stdout
  assert "variant momentum" in second.stdout  # from the checkpoint
  resumed, history, config = linen["train"](epochs=4, resume=True, out=out)
  assert "Resumed from epoch 4" in capsys.readouterr().out
  assert config["variant"] == "momentum"
  straight, straight_history, _ = linen["train"](
    epochs=4, variant="momentum", out=tmp_path / "straight"
  )
  assert history["epoch"] == [1, 2, 3, 4]
  assert int(resumed.step) == int(straight.step) > 0
  # Params and the optimizer state (count, nu, momentum trace): same
  # computation in the same binary, equal to float32 rounding.
  for name in ("params", "opt_state"):
    a_leaves = jax.tree.leaves(getattr(resumed, name))
    b_leaves = jax.tree.leaves(getattr(straight, name))
    assert len(a_leaves) == len(b_leaves) > 0
    for a, b in zip(a_leaves, b_leaves, strict=True):
      assert_close(a, b, SAME_MATH, jnp.float32, name)
  assert history["test_accuracy"] == pytest.approx(
    straight_history["test_accuracy"], abs=1e-6
  )
