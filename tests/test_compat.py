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
from tolerances import VS_FRAMEWORK, assert_close

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
