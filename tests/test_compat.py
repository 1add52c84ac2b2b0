"""optax_rms.compat against the real frameworks.

Golden trajectories in tests/goldens/ were made by running each framework's own
RMSprop (tests/goldens/make_goldens.py, which documents versions and commands).
When torch or keras is importable here, the same cases also run live against
the framework, so the goldens cannot go stale silently.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tolerances import SAME_MATH, VS_FRAMEWORK, assert_close

import optax_rms
from optax_rms import compat

GOLDENS = pathlib.Path(__file__).resolve().parent / "goldens"
CONSTRUCTORS = {
  "torch": (compat.pytorch, "lr"),
  "keras": (compat.keras, "learning_rate"),
  "tf1": (compat.tf1, "learning_rate"),
  "mxnet": (compat.mxnet, "learning_rate"),
  "timm": (compat.timm, "lr"),
}


def _manifest(fw):
  path = GOLDENS / f"manifest_{fw}.json"
  return json.loads(path.read_text()) if path.exists() else None


def _cases():
  for fw in CONSTRUCTORS:
    manifest = _manifest(fw)
    for case in (manifest or {}).get("cases", {}):
      yield pytest.param(fw, case, id=f"{fw}-{case}")


def _inputs():
  data = np.load(GOLDENS / "inputs.npz")
  params0 = {k: data[f"params0/{k}"] for k in ("w", "b")}
  grads = {k: data[f"grads/{k}"] for k in ("w", "b")}
  return params0, grads


def _learning_rate(lrs):
  """A float when constant, else an optax schedule reading the per-step values."""
  if np.all(lrs == lrs[0]):
    return float(lrs[0])
  table = jnp.asarray(lrs, jnp.float32)
  return lambda step: table[step]


def run_compat(fw, kwargs, lrs, params0, grads):
  ctor, lr_name = CONSTRUCTORS[fw]
  tx = ctor(**{lr_name: _learning_rate(lrs)}, **kwargs)
  params = {k: jnp.asarray(v) for k, v in params0.items()}
  state = tx.init(params)

  @jax.jit
  def step(params, state, g):
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state

  use_ema = kwargs.get("use_ema", False)
  out = {k: [] for k in (*params, *(f"ema/{k}" for k in params if use_ema))}
  for t in range(len(lrs)):
    params, state = step(params, state, {k: jnp.asarray(grads[k][t]) for k in params})
    for k in params:
      out[k].append(np.asarray(params[k]))
    if use_ema:  # the average, as Keras' finalize_variable_values would write it
      for k, v in optax_rms.get_ema_params(state).items():
        out[f"ema/{k}"].append(np.asarray(v))
  return {k: np.stack(v) for k, v in out.items()}


def _assert_trajectories_match(got, want, label):
  assert sorted(got) == sorted(want), label
  for k in want:
    for t in range(want[k].shape[0]):
      assert_close(
        got[k][t],
        want[k][t],
        VS_FRAMEWORK,
        jnp.float32,
        err_msg=f"{label}: param {k!r} after step {t + 1}",
      )


def test_goldens_exist_for_every_framework():
  missing = [fw for fw in CONSTRUCTORS if _manifest(fw) is None]
  assert not missing, (
    f"no golden files for {missing}: run tests/goldens/make_goldens.py"
  )


@pytest.mark.parametrize("fw,case", list(_cases()))
def test_matches_golden(fw, case):
  params0, grads = _inputs()
  golden = np.load(GOLDENS / f"{fw}.npz")
  kwargs = _manifest(fw)["cases"][case]["kwargs"]
  lrs = golden[f"{case}/lrs"]
  prefix = f"{case}/"
  want = {
    k[len(prefix) :]: golden[k]
    for k in golden.files
    if k.startswith(prefix) and k != f"{case}/lrs"
  }
  got = run_compat(fw, kwargs, lrs, params0, grads)
  _assert_trajectories_match(got, want, f"{fw}/{case}")


def _frameworks_module():
  spec = importlib.util.spec_from_file_location(
    "goldens_frameworks", GOLDENS / "frameworks.py"
  )
  module = importlib.util.module_from_spec(spec)
  sys.modules.setdefault("goldens_frameworks", module)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize(
  "fw,case", [c for c in _cases() if c.values[0] in ("torch", "keras", "timm")]
)
def test_matches_live_framework(fw, case):
  """The same comparison against the installed framework itself."""
  if fw == "timm":
    # timm's __init__ needs torchvision (no CPU build here); the runner loads
    # only timm/optim, so its presence is all that is asked.
    if not all(importlib.util.find_spec(m) for m in ("timm", "torch")):
      pytest.skip(
        "timm is not installed (pip install torch==2.13.0; pip install --no-deps timm)"
      )
  else:
    pytest.importorskip(
      fw, reason=f"{fw} is not installed (pip install -e '.[parity]')"
    )
  params0, grads = _inputs()
  lrs = np.load(GOLDENS / f"{fw}.npz")[f"{case}/lrs"]
  kwargs = _manifest(fw)["cases"][case]["kwargs"]
  runner = getattr(_frameworks_module(), f"run_{fw}")
  if fw == "keras" and importlib.import_module("keras").backend.backend() == "jax":
    # Keras' JAX trainer's own path (jitted stateless_apply), and fast: eager
    # apply_gradients retraces the accumulation/EMA lax.conds every step.
    runner = _frameworks_module().run_keras_stateless
  want = runner(dict(kwargs), lrs, params0, grads)
  got = run_compat(fw, kwargs, lrs, params0, grads)
  _assert_trajectories_match(got, want, f"live {fw}/{case}")


@pytest.mark.parametrize("original", [False, True], ids=["fixed", "original"])
def test_linear_regression_example_matches_mxnet(original):
  import runpy

  module = runpy.run_path(str(GOLDENS.parent.parent / "examples/linear_regression.py"))
  history = module["train"](original=original)
  golden = np.load(GOLDENS / "mxnet.npz")
  key = "linreg_original" if original else "linreg_fixed"
  got = np.array([h["loss"] for h in history])
  assert_close(got, golden[f"{key}/losses"], VS_FRAMEWORK, jnp.float32)
  assert_close(history[-1]["w"], golden[f"{key}/w"][-1], VS_FRAMEWORK, jnp.float32)
  assert_close(history[-1]["b"], golden[f"{key}/b"][-1], VS_FRAMEWORK, jnp.float32)


@pytest.mark.parametrize(
  "ctor,kwargs,pattern",
  [
    (compat.pytorch, dict(alpha=1.0), r"alpha"),
    (compat.pytorch, dict(lr=-1.0), r"lr must"),
    (compat.keras, dict(rho=1.5), r"rho"),
    (compat.keras, dict(epsilon=0.0), r"epsilon"),
    (compat.keras, dict(clipnorm=1.0, clipvalue=1.0), r"Only one of"),
    (compat.tf1, dict(learning_rate=0.1, momentum=1.0), r"momentum"),
    (compat.mxnet, dict(gamma1=-0.1), r"gamma1"),
    (compat.mxnet, dict(clip_gradient=0.0), r"clip_gradient"),
    (compat.timm, dict(weight_decay=-1.0), r"weight_decay"),
  ],
)
def test_compat_validates_with_the_frameworks_names(ctor, kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    ctor(**kwargs)


def test_a_preset_only_flag_must_be_a_bool():
  """timm's decoupled_decay is the presets' own (not passed on to rmsprop,
  which checks its flags): "no" once meant decoupled decay."""
  with pytest.raises(TypeError, match=r"decoupled_decay must be a bool, got str"):
    compat.timm(weight_decay=1e-4, decoupled_decay="no")


def test_bare_presets_keep_one_flat_state():
  params = {"w": jnp.ones(3)}
  for tx in (
    compat.pytorch(momentum=0.9),
    compat.tf1(0.1),
    compat.timm(),
    compat.keras(),
    compat.mxnet(),
  ):
    assert isinstance(tx.init(params), optax_rms.RMSPropState)


# Keras' optimizer-level options: bad values, and whether Keras 3.15 itself
# rejects them (ours are errors at construction either way; where Keras accepts
# a value it then ignores or misuses, optax_rms is stricter).
_KERAS_OPTION_ERRORS = [
  (dict(use_ema=True, ema_momentum=1.5), ValueError, r"ema_momentum", True),
  (dict(use_ema=True, ema_momentum=-0.1), ValueError, r"ema_momentum", True),
  (dict(use_ema=True, ema_overwrite_frequency=0.5), TypeError, r"ema_overwrite", True),
  (dict(use_ema=True, ema_overwrite_frequency=-1), ValueError, r"ema_overwrite", True),
  (dict(gradient_accumulation_steps=1), ValueError, r"gradient_accumulation", True),
  (dict(gradient_accumulation_steps=-2), ValueError, r"gradient_accumulation", True),
  # Keras accepts these: 0 as "off", 2.5 (then counts modulo 2.5), any factor,
  # a truthy non-bool, and an out-of-range momentum while use_ema is off.
  (dict(gradient_accumulation_steps=0), ValueError, r"gradient_accumulation", False),
  (dict(gradient_accumulation_steps=2.5), TypeError, r"gradient_accumulation", False),
  (dict(loss_scale_factor=0.0), ValueError, r"loss_scale_factor", False),
  (dict(loss_scale_factor=float("inf")), ValueError, r"loss_scale_factor", False),
  (dict(use_ema=1), TypeError, r"use_ema", False),
  (dict(ema_momentum=2.0), ValueError, r"ema_momentum", False),
  (dict(use_ema=True, ema_overwrite_frequency=True), TypeError, r"ema_over", False),
  # Past the int32 step counters (once an OverflowError at the first update).
  (
    dict(gradient_accumulation_steps=2**31),
    ValueError,
    r"gradient_accumulation_steps must be an int in \[2, 2\*\*31 - 1\]",
    False,
  ),
  (
    dict(use_ema=True, ema_overwrite_frequency=2**31),
    ValueError,
    r"ema_overwrite_frequency must be an int in \[1, 2\*\*31 - 1\]",
    False,
  ),
]


@pytest.mark.parametrize(
  "kwargs,error,pattern,keras_raises",
  _KERAS_OPTION_ERRORS,
  ids=[str(c[0]) for c in _KERAS_OPTION_ERRORS],
)
def test_keras_options_validated_at_construction(kwargs, error, pattern, keras_raises):
  with pytest.raises(error, match=pattern):
    compat.keras(**kwargs)
  if keras_raises and importlib.util.find_spec("keras"):
    import keras

    with pytest.raises((ValueError, TypeError)):
      keras.optimizers.RMSprop(**kwargs)


def _run_keras_preset(kwargs, grads, steps=12):
  tx = compat.keras(learning_rate=0.01, **kwargs)
  params = {k: jnp.asarray(v) for k, v in _inputs()[0].items()}
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(steps):
    g_t = {k: jnp.asarray(g[t]) for k, g in grads.items()}
    updates, state = step(g_t, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.parametrize("kwargs", [{}, dict(momentum=0.9, clipnorm=1.0)])
def test_keras_loss_scale_factor_undoes_a_scaled_loss(kwargs):
  """Gradients of ``loss * factor`` (as Keras' train_step makes them) take
  the unscaled trajectory. A power-of-2 factor scales and unscales exactly,
  but the two programs fuse differently under XLA (a ulp apart seen): so
  SAME_MATH, not bitwise."""
  grads = _inputs()[1]
  factor = 1024.0
  scaled = {k: (g * np.float32(factor)).astype(np.float32) for k, g in grads.items()}
  want, _ = _run_keras_preset(kwargs, grads)
  got, _ = _run_keras_preset(dict(kwargs, loss_scale_factor=factor), scaled)
  for k in want:
    assert_close(got[k], want[k], SAME_MATH, jnp.float32, err_msg=k)


def test_keras_gradient_accumulation_moves_only_every_k_calls():
  grads = _inputs()[1]
  tx = compat.keras(gradient_accumulation_steps=3, use_ema=True)
  params = {k: jnp.asarray(v) for k, v in _inputs()[0].items()}
  state = tx.init(params)
  moved = []
  for t in range(9):
    g_t = {k: jnp.asarray(g[t]) for k, g in grads.items()}
    updates, state = tx.update(g_t, state, params)
    moved.append(any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates)))
    params = optax.apply_updates(params, updates)
  assert moved == [False, False, True] * 3
  ema = optax_rms.get_ema_params(state)
  assert jax.tree.structure(ema) == jax.tree.structure(params)


@pytest.mark.parametrize("preset", ["pytorch", "keras", "tf1", "mxnet", "timm"])
def test_presets_pass_state_storage_through_and_refuse_other_keywords(preset):
  """No framework has 8-bit state: the presets pass rmsprop's state-storage
  keywords through (same math, other storage) and name anything else."""
  preset_fn = getattr(optax_rms.compat, preset)
  make = (lambda **kw: preset_fn(0.01, **kw)) if preset == "tf1" else preset_fn
  centered = dict(centered=True)
  kw = dict(nu_quantization="8bit", mu_quantization="8bit")
  p = {"w": jnp.ones((4, 3))}
  state = make(**centered, **kw).init(p)
  leaves = jax.tree.leaves(state)
  assert sum(x.dtype == jnp.uint8 for x in leaves) == 2  # nu and mu codes
  bf16 = make(**centered, nu_dtype="bfloat16").init(p)
  assert any(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(bf16))
  unexpected = r"unexpected keyword argument\(s\) \['decay_rate'\]"
  with pytest.raises(TypeError, match=unexpected):
    make(decay_rate=0.5)
  with pytest.raises(ValueError, match="momentum_quantization"):
    make(momentum_quantization="8bit")  # momentum off by default
