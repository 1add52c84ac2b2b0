"""Runners that drive each framework's own RMSprop on a fixed gradient sequence.

Every `run_<fw>` has the signature

  run_<fw>(kwargs, lrs, params0, grads) -> {"w": (T, 3, 4), "b": (T, 4)}

`kwargs` are the framework's own constructor arguments (its names and its
semantics), without the learning rate; `lrs[t]` is the learning rate of step t
(0-based); `grads[name][t]` is fed straight to the optimizer at step t (there is
no loss function); the result holds the float32 parameters after each step.

Each framework is imported inside its own function, so this module imports with
NumPy alone, and a run needs only the framework it asks for. The `probe_<fw>`
functions report what the optimizer's accumulators hold right after they are
created (inspected, not assumed), for the manifest.

Run `python frameworks.py FW` (FW in torch, keras, tf1, timm, mxnet) for a
quick look at one framework: its version, its probe, and a 3-step run.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import types
from typing import Any

import numpy as np

PARAM_NAMES = ("w", "b")
FRAMEWORKS = ("torch", "keras", "tf1", "timm", "mxnet")


def _check_inputs(
  lrs: np.ndarray, params0: dict[str, np.ndarray], grads: dict[str, np.ndarray]
) -> int:
  steps = len(lrs)
  for name in PARAM_NAMES:
    if grads[name].shape != (steps, *params0[name].shape):
      raise ValueError(
        f"grads[{name!r}] has shape {grads[name].shape}, expected "
        f"{(steps, *params0[name].shape)}"
      )
  return steps


def _empty_trajectory(
  steps: int, params0: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
  return {
    name: np.empty((steps, *params0[name].shape), np.float32) for name in PARAM_NAMES
  }


# --------------------------------------------------------------------------- torch


def run_torch(
  kwargs: dict[str, Any],
  lrs: np.ndarray,
  params0: dict[str, np.ndarray],
  grads: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
  """torch.optim.RMSprop, single-tensor path (foreach=False)."""
  import torch

  steps = _check_inputs(lrs, params0, grads)
  params = [
    torch.nn.Parameter(torch.tensor(params0[n], dtype=torch.float32))
    for n in PARAM_NAMES
  ]
  opt = torch.optim.RMSprop(params, lr=float(lrs[0]), foreach=False, **kwargs)
  out = _empty_trajectory(steps, params0)
  for t in range(steps):
    for group in opt.param_groups:
      group["lr"] = float(lrs[t])
    for p, n in zip(params, PARAM_NAMES, strict=True):
      p.grad = torch.tensor(grads[n][t], dtype=torch.float32)
    opt.step()
    for p, n in zip(params, PARAM_NAMES, strict=True):
      out[n][t] = p.detach().numpy()
  return out


def probe_torch() -> dict[str, Any]:
  """State is created lazily by the first step: take one zero-gradient step
  with alpha=0.5 and read square_avg back (square_avg = 0.5 * initial)."""
  import torch

  p = torch.nn.Parameter(torch.ones(2))
  opt = torch.optim.RMSprop(
    [p], lr=0.1, alpha=0.5, centered=True, momentum=0.5, foreach=False
  )
  before = {k: str(v) for k, v in opt.state[p].items()}
  p.grad = torch.zeros(2)
  opt.step()
  state = opt.state[p]
  return {
    "state_before_first_step": before or "empty (created lazily in step())",
    "state_keys_after_first_step": sorted(state.keys()),
    "square_avg_initial_inferred": (state["square_avg"] / 0.5).tolist(),
    "grad_avg_initial_inferred": (state["grad_avg"] / 0.5).tolist(),
    "momentum_buffer_after_zero_step": state["momentum_buffer"].tolist(),
    "param_after_zero_step": p.detach().tolist(),
  }


# --------------------------------------------------------------------------- timm


def _load_timm_rmsprop_tf() -> Any:
  """Load timm/optim/rmsprop_tf.py without running timm/__init__.py or
  timm/optim/__init__.py (which import torchvision, unavailable on CPU).

  rmsprop_tf.py imports only torch and its two siblings `._helpers` and
  `._types` (which import only torch and typing): a bare package module whose
  __path__ is the installed timm/optim folder lets those relative imports
  resolve to the real files.
  """
  pkg_name = "_goldens_timm_optim"
  if pkg_name not in sys.modules:
    spec = importlib.util.find_spec("timm")  # finds, does not import, timm
    if spec is None or not spec.submodule_search_locations:
      raise ImportError("timm is not installed (pip install --no-deps timm)")
    optim_dir = os.path.join(list(spec.submodule_search_locations)[0], "optim")
    pkg = types.ModuleType(pkg_name)
    pkg.__path__ = [optim_dir]
    sys.modules[pkg_name] = pkg
  return importlib.import_module(f"{pkg_name}.rmsprop_tf")


def timm_version() -> str:
  from importlib.metadata import version

  return version("timm")


def run_timm(
  kwargs: dict[str, Any],
  lrs: np.ndarray,
  params0: dict[str, np.ndarray],
  grads: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
  """timm.optim.rmsprop_tf.RMSpropTF, single-tensor path (foreach=False)."""
  import torch

  rmsprop_tf = _load_timm_rmsprop_tf()
  steps = _check_inputs(lrs, params0, grads)
  params = [
    torch.nn.Parameter(torch.tensor(params0[n], dtype=torch.float32))
    for n in PARAM_NAMES
  ]
  # timm releases before the foreach path have only the single-tensor one.
  accepts = inspect.signature(rmsprop_tf.RMSpropTF).parameters
  single = {"foreach": False} if "foreach" in accepts else {}
  opt = rmsprop_tf.RMSpropTF(params, lr=float(lrs[0]), **single, **kwargs)
  out = _empty_trajectory(steps, params0)
  for t in range(steps):
    for group in opt.param_groups:
      group["lr"] = float(lrs[t])
    for p, n in zip(params, PARAM_NAMES, strict=True):
      p.grad = torch.tensor(grads[n][t], dtype=torch.float32)
    opt.step()
    for p, n in zip(params, PARAM_NAMES, strict=True):
      out[n][t] = p.detach().numpy()
  return out


def probe_timm() -> dict[str, Any]:
  """Like probe_torch: one zero-gradient step with alpha=0.5."""
  import torch

  rmsprop_tf = _load_timm_rmsprop_tf()
  p = torch.nn.Parameter(torch.ones(2))
  opt = rmsprop_tf.RMSpropTF(
    [p], lr=0.1, alpha=0.5, centered=True, momentum=0.5, foreach=False
  )
  before = {k: str(v) for k, v in opt.state[p].items()}
  p.grad = torch.zeros(2)
  opt.step()
  state = opt.state[p]
  return {
    "module_file": rmsprop_tf.__file__,
    "state_before_first_step": before or "empty (created lazily in step())",
    "state_keys_after_first_step": sorted(state.keys()),
    "square_avg_initial_inferred": (state["square_avg"] / 0.5).tolist(),
    "grad_avg_initial_inferred": (state["grad_avg"] / 0.5).tolist(),
    "momentum_buffer_after_zero_step": state["momentum_buffer"].tolist(),
    "param_after_zero_step": p.detach().tolist(),
  }


# --------------------------------------------------------------------------- keras


def _import_keras() -> Any:
  """Keras on the backend already chosen, else TensorFlow.

  The goldens were made on the TensorFlow backend (the default here);
  the live test in tests/test_compat.py runs Keras on JAX (the root conftest
  sets KERAS_BACKEND=jax), which needs no TensorFlow. The optimizer's update
  is the same backend-neutral Keras code either way.
  """
  os.environ.setdefault("KERAS_BACKEND", "tensorflow")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import keras

  if keras.backend.backend() != os.environ["KERAS_BACKEND"]:
    raise RuntimeError(
      f"keras runs on {keras.backend.backend()!r}, not "
      f"{os.environ['KERAS_BACKEND']!r}: it was imported before KERAS_BACKEND "
      "was set"
    )
  return keras


def run_keras(
  kwargs: dict[str, Any],
  lrs: np.ndarray,
  params0: dict[str, np.ndarray],
  grads: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
  """keras.optimizers.RMSprop (Keras 3; see _import_keras for the backend).

  With ``use_ema=True`` the trajectory also holds ``ema/w``, ``ema/b``: the
  optimizer's moving averages after each step (what
  ``finalize_variable_values`` would write into the model), read from its
  ``_model_variables_moving_average`` slots.
  """
  keras = _import_keras()

  steps = _check_inputs(lrs, params0, grads)
  variables = [keras.Variable(params0[n], dtype="float32", name=n) for n in PARAM_NAMES]
  opt = keras.optimizers.RMSprop(learning_rate=float(lrs[0]), **kwargs)
  out = _empty_trajectory(steps, params0)
  if kwargs.get("use_ema"):
    out.update({f"ema/{n}": np.empty_like(out[n]) for n in PARAM_NAMES})
  for t in range(steps):
    # A float learning rate is held in a float32 variable: assign the step's.
    opt.learning_rate.assign(lrs[t])
    pairs = [
      (keras.ops.convert_to_tensor(grads[n][t], dtype="float32"), v)
      for n, v in zip(PARAM_NAMES, variables, strict=True)
    ]
    opt.apply_gradients(pairs)
    for n, v in zip(PARAM_NAMES, variables, strict=True):
      out[n][t] = keras.ops.convert_to_numpy(v.value)
    if kwargs.get("use_ema"):
      averages = opt._model_variables_moving_average
      for n, a in zip(PARAM_NAMES, averages, strict=True):
        out[f"ema/{n}"][t] = keras.ops.convert_to_numpy(a.value)
  return out


def run_keras_stateless(
  kwargs: dict[str, Any],
  lrs: np.ndarray,
  params0: dict[str, np.ndarray],
  grads: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
  """`run_keras`'s trajectory through ``opt.stateless_apply`` under ``jax.jit``.

  The path Keras' own JAX trainer takes (``fit`` jits a train step that calls
  ``stateless_apply``), and an order of magnitude faster than eager
  ``apply_gradients`` here, where every step of the accumulation and EMA code
  traces its ``lax.cond``s again. JAX backend only. The learning rate is the
  optimizer's float32 variable, set per step in the variables passed in.
  """
  keras = _import_keras()
  if keras.backend.backend() != "jax":
    raise RuntimeError("run_keras_stateless needs the JAX backend")
  import jax

  steps = _check_inputs(lrs, params0, grads)
  variables = [keras.Variable(params0[n], dtype="float32", name=n) for n in PARAM_NAMES]
  opt = keras.optimizers.RMSprop(learning_rate=float(lrs[0]), **kwargs)
  opt.build(variables)
  index = {id(v): i for i, v in enumerate(opt.variables)}
  lr_index = index[id(opt._learning_rate)]
  ema_index = [
    index[id(a)] for a in getattr(opt, "_model_variables_moving_average", [])
  ]

  @jax.jit
  def step(opt_values, train_values, grads_t, lr):
    opt_values = list(opt_values)
    opt_values[lr_index] = lr
    return opt.stateless_apply(opt_values, grads_t, train_values)

  opt_values = [v.value for v in opt.variables]
  train_values = [v.value for v in variables]
  out = _empty_trajectory(steps, params0)
  if kwargs.get("use_ema"):
    out.update({f"ema/{n}": np.empty_like(out[n]) for n in PARAM_NAMES})
  for t in range(steps):
    grads_t = [np.asarray(grads[n][t], np.float32) for n in PARAM_NAMES]
    train_values, opt_values = step(
      opt_values, train_values, grads_t, np.float32(lrs[t])
    )
    for n, v in zip(PARAM_NAMES, train_values, strict=True):
      out[n][t] = np.asarray(v)
    for n, i in zip(PARAM_NAMES, ema_index, strict=False):
      out[f"ema/{n}"][t] = np.asarray(opt_values[i])
  return out


def probe_keras() -> dict[str, Any]:
  """Build the optimizer on a variable and read its slots before any step."""
  keras = _import_keras()
  v = keras.Variable(np.ones(2, np.float32), name="v")
  opt = keras.optimizers.RMSprop(learning_rate=0.1, centered=True, momentum=0.5)
  opt.build([v])
  slots = {
    s.path: keras.ops.convert_to_numpy(s.value).tolist()
    for s in opt.variables
    if s.shape == v.shape
  }
  lr_var = opt.learning_rate
  lr_var.assign(0.25)
  return {
    "slots_after_build": slots,
    "learning_rate_type": type(lr_var).__name__,
    "learning_rate_after_assign_0.25": float(
      keras.ops.convert_to_numpy(opt.learning_rate)
    ),
    "defaults": {"rho": 0.9, "epsilon": keras.optimizers.RMSprop().epsilon},
  }


def keras_version() -> str:
  keras = _import_keras()
  backend = keras.backend.backend()
  module = importlib.import_module(backend)
  return f"{keras.__version__} ({backend} backend, {backend} {module.__version__})"


# --------------------------------------------------------------------------- tf1


def _import_tf() -> Any:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf

  if not tf.executing_eagerly():
    raise RuntimeError("tensorflow is not executing eagerly")
  return tf


def run_tf1(
  kwargs: dict[str, Any],
  lrs: np.ndarray,
  params0: dict[str, np.ndarray],
  grads: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
  """tf.compat.v1.train.RMSPropOptimizer, eager mode, resource variables."""
  tf = _import_tf()

  steps = _check_inputs(lrs, params0, grads)
  variables = [tf.Variable(params0[n], dtype=tf.float32, name=n) for n in PARAM_NAMES]
  step = {"t": 0}
  # The v1 optimizer calls a callable learning rate in _prepare(), i.e. once
  # per apply_gradients call in eager mode.
  opt = tf.compat.v1.train.RMSPropOptimizer(
    learning_rate=lambda: tf.constant(lrs[step["t"]], tf.float32), **kwargs
  )
  out = _empty_trajectory(steps, params0)
  for t in range(steps):
    step["t"] = t
    pairs = [
      (tf.constant(grads[n][t], tf.float32), v)
      for n, v in zip(PARAM_NAMES, variables, strict=True)
    ]
    opt.apply_gradients(pairs)
    for n, v in zip(PARAM_NAMES, variables, strict=True):
      out[n][t] = v.numpy()
  return out


def probe_tf1() -> dict[str, Any]:
  """Create the slots (as apply_gradients does first) and read them."""
  tf = _import_tf()
  v = tf.Variable(np.ones(2, np.float32), name="v")
  opt = tf.compat.v1.train.RMSPropOptimizer(
    learning_rate=0.1, centered=True, momentum=0.5
  )
  opt._create_slots([v])  # what apply_gradients calls before the first update
  slots = {
    name: opt.get_slot(v, name).numpy().tolist() for name in opt.get_slot_names()
  }
  return {"slots_after_create_slots": slots}


def tf_version() -> str:
  return _import_tf().__version__


# --------------------------------------------------------------------------- mxnet


def run_mxnet(
  kwargs: dict[str, Any],
  lrs: np.ndarray,
  params0: dict[str, np.ndarray],
  grads: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
  """mx.optimizer.RMSProp (MXNet 1.x) through mx.optimizer.get_updater."""
  import mxnet as mx

  steps = _check_inputs(lrs, params0, grads)
  weights = [mx.nd.array(params0[n], dtype="float32") for n in PARAM_NAMES]
  opt = mx.optimizer.RMSProp(learning_rate=float(lrs[0]), **kwargs)
  updater = mx.optimizer.get_updater(opt)
  out = _empty_trajectory(steps, params0)
  for t in range(steps):
    # Optimizer._get_lr reads self.lr (no lr_scheduler is set).
    opt.set_learning_rate(float(lrs[t]))
    for index, (n, w) in enumerate(zip(PARAM_NAMES, weights, strict=True)):
      updater(index, mx.nd.array(grads[n][t], dtype="float32"), w)
    for n, w in zip(PARAM_NAMES, weights, strict=True):
      out[n][t] = w.asnumpy()
  return out


def probe_mxnet() -> dict[str, Any]:
  """Read the states that the updater creates on its first call."""
  import mxnet as mx

  result: dict[str, Any] = {}
  for centered in (False, True):
    opt = mx.optimizer.RMSProp(learning_rate=0.1, centered=centered)
    w = mx.nd.ones((2,), dtype="float32")
    state = opt.create_state_multi_precision(0, w)
    states = state if isinstance(state, tuple | list) else (state,)
    result[f"centered={centered}"] = [s.asnumpy().tolist() for s in states]
  opt = mx.optimizer.RMSProp(learning_rate=0.1)
  opt.set_learning_rate(0.25)
  result["_get_lr_after_set_learning_rate_0.25"] = opt._get_lr(0)
  return {"states_from_create_state": result}


def mxnet_version() -> str:
  import mxnet as mx

  return mx.__version__


def run_mxnet_linear_regression(original: bool) -> dict[str, np.ndarray]:
  """The Gluon "RMSprop from scratch" linear regression, optimised by MXNet's
  own mx.optimizer.RMSProp.

  X = [[1,2],[3,4],[5,6],[7,8]], y = [0,-1,-2,-3]; yhat = X @ w + b with
  w = [[1],[-1]], b = [0.5]; batch_size = 10, so each epoch is one batch of
  all four rows, in order; 5 epochs. The gradient is that of the SUM of the
  squared loss (yhat - y)**2 over the batch (loss.backward() on a non-scalar
  sums it), and rescale_grad = 1 / batch_size. The epoch's loss is the mean of
  the squared loss over the whole data after the epoch's update.

  original=True keeps y of shape (4,), so (yhat - y)**2 broadcasts to (4, 4)
  (the tutorial's bug, reproduced on purpose); original=False reshapes y to
  (4, 1).
  """
  import mxnet as mx
  from mxnet import autograd

  batch_size = 10
  epochs = 5
  x = mx.nd.array([[1, 2], [3, 4], [5, 6], [7, 8]], dtype="float32")
  y = mx.nd.array([0, -1, -2, -3], dtype="float32")
  if not original:
    y = y.reshape((4, 1))
  w = mx.nd.array([[1.0], [-1.0]], dtype="float32")
  b = mx.nd.array([0.5], dtype="float32")
  params = [w, b]
  for p in params:
    p.attach_grad()

  def square_loss(yhat: Any, target: Any) -> Any:
    return (yhat - target) ** 2

  opt = mx.optimizer.RMSProp(
    learning_rate=0.03, gamma1=0.9, epsilon=1e-6, rescale_grad=1.0 / batch_size
  )
  updater = mx.optimizer.get_updater(opt)
  losses = np.empty((epochs,), np.float32)
  ws = np.empty((epochs, 2, 1), np.float32)
  bs = np.empty((epochs, 1), np.float32)
  num_rows = x.shape[0]
  for epoch in range(epochs):
    for start in range(0, num_rows, batch_size):  # one batch: all four rows
      xb = x[start : start + batch_size]
      yb = y[start : start + batch_size]
      with autograd.record():
        loss = square_loss(mx.nd.dot(xb, w) + b, yb)
      loss.backward()
      for index, p in enumerate(params):
        updater(index, p.grad, p)
    losses[epoch] = mx.nd.mean(square_loss(mx.nd.dot(x, w) + b, y)).asscalar()
    ws[epoch] = w.asnumpy()
    bs[epoch] = b.asnumpy()
  return {"losses": losses, "w": ws, "b": bs}


# --------------------------------------------------------------------------- registry

RUNNERS = {
  "torch": run_torch,
  "keras": run_keras,
  "tf1": run_tf1,
  "timm": run_timm,
  "mxnet": run_mxnet,
}
PROBES = {
  "torch": probe_torch,
  "keras": probe_keras,
  "tf1": probe_tf1,
  "timm": probe_timm,
  "mxnet": probe_mxnet,
}


def framework_version(fw: str) -> str:
  """The version string of the framework behind `fw` (imports only it)."""
  if fw == "torch":
    import torch

    return str(torch.__version__)
  if fw == "timm":
    import torch

    return f"{timm_version()} (torch {torch.__version__})"
  if fw == "keras":
    return keras_version()
  if fw == "tf1":
    return tf_version()
  if fw == "mxnet":
    return mxnet_version()
  raise ValueError(f"unknown framework {fw!r}")


def _main(argv: list[str]) -> int:
  if len(argv) != 1 or argv[0] not in FRAMEWORKS:
    print(f"usage: python frameworks.py {{{','.join(FRAMEWORKS)}}}")
    return 2
  fw = argv[0]
  print("version:", framework_version(fw))
  print("probe:", PROBES[fw]())
  rng = np.random.default_rng(0)
  params0 = {
    "w": rng.standard_normal((3, 4)).astype(np.float32),
    "b": rng.standard_normal(4).astype(np.float32),
  }
  grads = {
    n: rng.standard_normal((3, *p.shape)).astype(np.float32) for n, p in params0.items()
  }
  traj = RUNNERS[fw]({}, np.full(3, 0.01), params0, grads)
  print("b after 3 steps of lr 0.01:", traj["b"][-1], "from", params0["b"])
  return 0


if __name__ == "__main__":
  sys.exit(_main(sys.argv[1:]))
