"""Generate the shared inputs and each framework's golden RMSprop trajectories.

  python make_goldens.py --framework torch|keras|tf1|timm|mxnet|all-but-mxnet
                         [--new-inputs]

writes, next to this file:
  inputs.npz            params0/{w,b}, grads/{w,b}, lrs/{constant,schedule}
                        (only when missing, or with --new-inputs)
  <fw>.npz              <case>/{w,b,lrs} for every case of the framework
  manifest_<fw>.json    framework, version, python, cases, plus what was
                        checked while generating (see README.md)

Every number in these files comes from running the framework named; nothing is
typed in by hand. See README.md for the environments this needs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
INPUTS = os.path.join(HERE, "inputs.npz")

SEED = 20250101
T = 60
ZERO_STEP = 7
BASE_LR = 0.01
SCHEDULE_PERIOD = 5
SCHEDULE_FACTORS = (1.0, 0.5, 2.0, 0.25)

# case name -> (the framework's own constructor kwargs, "constant" | "schedule")
CASES: dict[str, dict[str, tuple[dict[str, Any], str]]] = {
  "torch": {
    "default": ({}, "constant"),
    "alpha": ({"alpha": 0.9}, "constant"),
    "eps": ({"eps": 1e-3}, "constant"),
    "momentum": ({"momentum": 0.9}, "constant"),
    "centered": ({"centered": True}, "constant"),
    "centered_momentum": ({"centered": True, "momentum": 0.9}, "constant"),
    "weight_decay": ({"weight_decay": 0.1}, "constant"),
    "maximize": ({"maximize": True}, "constant"),
    "momentum_sched": ({"momentum": 0.9}, "schedule"),
    "everything_sched": (
      {
        "alpha": 0.95,
        "eps": 1e-6,
        "weight_decay": 0.01,
        "momentum": 0.5,
        "centered": True,
        "maximize": True,
      },
      "schedule",
    ),
  },
  "keras": {
    "default": ({}, "constant"),
    "rho": ({"rho": 0.5}, "constant"),
    "momentum": ({"momentum": 0.9}, "constant"),
    "centered": ({"centered": True}, "constant"),
    "centered_momentum": ({"centered": True, "momentum": 0.9}, "constant"),
    "epsilon": ({"epsilon": 1e-3}, "constant"),
    "weight_decay": ({"weight_decay": 0.1}, "constant"),
    "clipnorm": ({"clipnorm": 1.0}, "constant"),
    "clipvalue": ({"clipvalue": 0.5}, "constant"),
    "global_clipnorm": ({"global_clipnorm": 1.0}, "constant"),
    "momentum_sched": ({"momentum": 0.9}, "schedule"),
    "everything_sched": (
      {
        "rho": 0.8,
        "momentum": 0.5,
        "centered": True,
        "weight_decay": 0.01,
        "clipnorm": 2.0,
      },
      "schedule",
    ),
    # Keras' optimizer-level options (issue 18), alone and combined.
    "ema": ({"use_ema": True}, "constant"),
    "ema_momentum": ({"use_ema": True, "ema_momentum": 0.9}, "constant"),
    "ema_overwrite": (
      {"use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 5},
      "constant",
    ),
    "ema_momentum_weight_decay": (
      {
        "use_ema": True,
        "ema_momentum": 0.8,
        "ema_overwrite_frequency": 7,
        "momentum": 0.9,
        "weight_decay": 0.1,
      },
      "constant",
    ),
    "ema_centered_clipnorm": (
      {"use_ema": True, "ema_momentum": 0.9, "centered": True, "clipnorm": 1.0},
      "constant",
    ),
    "ema_global_clipnorm_sched": (
      {"use_ema": True, "ema_overwrite_frequency": 3, "global_clipnorm": 1.0},
      "schedule",
    ),
    "loss_scale": ({"loss_scale_factor": 3.0}, "constant"),
    "loss_scale_clipvalue_momentum": (
      {"loss_scale_factor": 3.0, "clipvalue": 0.5, "momentum": 0.9},
      "constant",
    ),
    "loss_scale_centered_weight_decay": (
      {"loss_scale_factor": 0.1, "centered": True, "weight_decay": 0.1},
      "constant",
    ),
    "accumulation": ({"gradient_accumulation_steps": 3}, "constant"),
    "accumulation_momentum_sched": (
      {"gradient_accumulation_steps": 4, "momentum": 0.9},
      "schedule",
    ),
    "accumulation_clipnorm": (
      {"gradient_accumulation_steps": 3, "clipnorm": 1.0},
      "constant",
    ),
    "accumulation_global_clipnorm_centered": (
      {"gradient_accumulation_steps": 2, "global_clipnorm": 1.0, "centered": True},
      "constant",
    ),
    "accumulation_clipvalue_weight_decay_sched": (
      {"gradient_accumulation_steps": 3, "clipvalue": 0.5, "weight_decay": 0.1},
      "schedule",
    ),
    "accumulation_ema": (
      {"gradient_accumulation_steps": 3, "use_ema": True, "ema_momentum": 0.9},
      "constant",
    ),
    "accumulation_ema_overwrite": (
      {
        "gradient_accumulation_steps": 2,
        "use_ema": True,
        "ema_momentum": 0.9,
        "ema_overwrite_frequency": 2,
      },
      "constant",
    ),
    "all_options_sched": (
      {
        "rho": 0.8,
        "momentum": 0.5,
        "centered": True,
        "weight_decay": 0.01,
        "global_clipnorm": 2.0,
        "use_ema": True,
        "ema_momentum": 0.9,
        "ema_overwrite_frequency": 2,
        "loss_scale_factor": 3.0,
        "gradient_accumulation_steps": 3,
      },
      "schedule",
    ),
  },
  "tf1": {
    "default": ({}, "constant"),
    "momentum": ({"momentum": 0.9}, "constant"),
    "centered": ({"centered": True}, "constant"),
    "centered_momentum": ({"centered": True, "momentum": 0.9}, "constant"),
    "epsilon": ({"epsilon": 1e-3}, "constant"),
    "decay": ({"decay": 0.5}, "constant"),
    "momentum_sched": ({"momentum": 0.9}, "schedule"),
    "centered_momentum_sched": (
      {"centered": True, "momentum": 0.9, "decay": 0.95},
      "schedule",
    ),
  },
  "mxnet": {
    "default": ({}, "constant"),
    "gamma1": ({"gamma1": 0.5}, "constant"),
    "centered": ({"centered": True}, "constant"),
    "centered_gamma2": ({"centered": True, "gamma2": 0.5}, "constant"),
    "epsilon": ({"epsilon": 1e-3}, "constant"),
    "wd": ({"wd": 0.1}, "constant"),
    "rescale_grad": ({"rescale_grad": 0.1}, "constant"),
    "clip_gradient": ({"clip_gradient": 1.0}, "constant"),
    "clip_weights": ({"clip_weights": 0.5}, "constant"),
    "rescale_wd_clip": (
      {"rescale_grad": 0.5, "wd": 0.05, "clip_gradient": 2.0},
      "constant",
    ),
    "centered_sched": ({"centered": True, "clip_weights": 2.0}, "schedule"),
    "sched": ({}, "schedule"),
  },
  "timm": {
    "default": ({}, "constant"),
    "momentum": ({"momentum": 0.9}, "constant"),
    "centered": ({"centered": True}, "constant"),
    "centered_momentum": ({"centered": True, "momentum": 0.9}, "constant"),
    "weight_decay": ({"weight_decay": 0.1}, "constant"),
    "decoupled_decay": ({"weight_decay": 0.1, "decoupled_decay": True}, "constant"),
    "lr_after_momentum_sched": (
      {"momentum": 0.9, "lr_in_momentum": False},
      "schedule",
    ),
    "lr_in_momentum_sched": ({"momentum": 0.9}, "schedule"),
    "everything_sched": (
      {
        "alpha": 0.95,
        "momentum": 0.5,
        "centered": True,
        "weight_decay": 0.01,
        "decoupled_decay": True,
        "lr_in_momentum": False,
      },
      "schedule",
    ),
  },
}

# Arguments every run of a framework passes besides `kwargs` and the lr.
FIXED_KWARGS = {
  "torch": {"foreach": False},
  "timm": {"foreach": False},
  "keras": {},
  "tf1": {},
  "mxnet": {},
}


def make_inputs() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(SEED)
  w0 = rng.standard_normal((3, 4)).astype(np.float32)
  b0 = rng.standard_normal((4,)).astype(np.float32)
  scale = 10.0 ** rng.uniform(-3.0, 2.0, size=T)  # one magnitude per step
  gw = rng.standard_normal((T, 3, 4)) * scale[:, None, None]
  gb = rng.standard_normal((T, 4)) * scale[:, None]
  gw[ZERO_STEP] = 0.0
  gb[ZERO_STEP] = 0.0
  segment = np.arange(T) // SCHEDULE_PERIOD
  factors = np.asarray(SCHEDULE_FACTORS)[segment % len(SCHEDULE_FACTORS)]
  return {
    "params0/w": w0,
    "params0/b": b0,
    "grads/w": gw.astype(np.float32),
    "grads/b": gb.astype(np.float32),
    "grads/scale": scale,
    "lrs/constant": np.full(T, BASE_LR, np.float64),
    "lrs/schedule": (BASE_LR * factors).astype(np.float64),
  }


def load_inputs(new: bool) -> dict[str, np.ndarray]:
  if new or not os.path.exists(INPUTS):
    np.savez_compressed(INPUTS, **make_inputs())
    print(f"wrote {INPUTS}")
  with np.load(INPUTS) as data:
    return {k: data[k] for k in data.files}


def inputs_digest(inputs: dict[str, np.ndarray]) -> str:
  h = hashlib.sha256()
  for k in sorted(inputs):
    h.update(k.encode())
    h.update(np.ascontiguousarray(inputs[k]).tobytes())
  return h.hexdigest()


def _nonfinite(traj: dict[str, np.ndarray]) -> dict[str, list[int]]:
  bad = {}
  for name, arr in traj.items():
    steps = np.nonzero(~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1))[0]
    if steps.size:
      bad[name] = steps.tolist()
  return bad


def lr_checks(fw: str, run: Any, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
  """Show that the per-step learning rate really reaches the update.

  1. default kwargs, schedule vs constant lr: equal while the schedule equals
     the constant (steps 0..4), different after (steps 5..).
  2. default kwargs, lr set to 0 from step 20 on: the parameters stop moving.
  """
  params0 = {n: inputs[f"params0/{n}"] for n in ("w", "b")}
  grads = {n: inputs[f"grads/{n}"] for n in ("w", "b")}
  const = inputs["lrs/constant"]
  sched = inputs["lrs/schedule"]
  same = int(np.argmax(const != sched))  # first step where they differ
  a = run({}, const, params0, grads)
  b = run({}, sched, params0, grads)
  zero = const.copy()
  zero[20:] = 0.0
  z = run({}, zero, params0, grads)
  result = {
    "schedule_first_differs_at_step": same,
    "equal_before": all(np.array_equal(a[n][:same], b[n][:same]) for n in a),
    "differs_at_and_after": all(not np.array_equal(a[n][same], b[n][same]) for n in a),
    "frozen_after_lr_set_to_0_at_step_20": all(
      np.array_equal(z[n][19], z[n][k]) for n in z for k in range(20, T)
    ),
    "moving_before_step_20": all(not np.array_equal(z[n][18], z[n][19]) for n in z),
  }
  ok = all(v for k, v in result.items() if k != "schedule_first_differs_at_step")
  result["ok"] = ok
  if not ok:
    print(f"  WARNING: {fw}: learning-rate check failed: {result}")
  return result


def run_framework(fw: str, inputs: dict[str, np.ndarray]) -> None:
  import frameworks

  run = frameworks.RUNNERS[fw]
  version = frameworks.framework_version(fw)
  print(f"{fw}: {version}")
  params0 = {n: inputs[f"params0/{n}"] for n in ("w", "b")}
  grads = {n: inputs[f"grads/{n}"] for n in ("w", "b")}
  arrays: dict[str, np.ndarray] = {}
  cases: dict[str, Any] = {}
  nonfinite: dict[str, Any] = {}
  for case, (kwargs, lr_name) in CASES[fw].items():
    lrs = inputs[f"lrs/{lr_name}"]
    traj = run(dict(kwargs), lrs, params0, grads)
    for n in traj:  # "w", "b", and "ema/w", "ema/b" where the runner keeps one
      arr = np.asarray(traj[n], np.float32)
      expected = (T, *params0[n.rsplit("/", 1)[-1]].shape)
      if arr.shape != expected:
        raise RuntimeError(f"{fw}/{case}/{n}: shape {arr.shape}, not {expected}")
      arrays[f"{case}/{n}"] = arr
    arrays[f"{case}/lrs"] = np.asarray(lrs, np.float64)
    cases[case] = {"kwargs": kwargs, "lr": lr_name}
    bad = _nonfinite(traj)
    if bad:
      nonfinite[case] = bad
    print(f"  {case:26s} lr={lr_name:8s} finite={not bad}")

  extras: dict[str, Any] = {}
  if fw == "mxnet":
    for key, original in (("linreg_original", True), ("linreg_fixed", False)):
      res = frameworks.run_mxnet_linear_regression(original)
      for k, v in res.items():
        arrays[f"{key}/{k}"] = np.asarray(v, np.float32)
      extras[key] = {
        "function": f"run_mxnet_linear_regression(original={original})",
        "losses": [float(x) for x in res["losses"]],
      }
      print(f"  {key}: losses {res['losses']}")

  manifest = {
    "framework": fw,
    "version": version,
    "python": platform.python_version(),
    "numpy": np.__version__,
    "inputs_sha256": inputs_digest(inputs),
    "fixed_kwargs": FIXED_KWARGS[fw],
    "cases": cases,
    "nonfinite_steps": nonfinite,
    "lr_checks": lr_checks(fw, run, inputs),
    "accumulator_probe": frameworks.PROBES[fw](),
    "extras": extras,
  }
  np.savez_compressed(os.path.join(HERE, f"{fw}.npz"), **arrays)
  with open(os.path.join(HERE, f"manifest_{fw}.json"), "w") as f:
    json.dump(manifest, f, indent=2, sort_keys=False, default=str)
    f.write("\n")
  print(f"  wrote {fw}.npz and manifest_{fw}.json")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--framework",
    required=True,
    choices=["torch", "keras", "tf1", "timm", "mxnet", "all-but-mxnet"],
  )
  parser.add_argument("--new-inputs", action="store_true")
  args = parser.parse_args(argv)
  sys.path.insert(0, HERE)
  inputs = load_inputs(args.new_inputs)
  if args.framework == "all-but-mxnet":
    fws = ["torch", "keras", "tf1", "timm"]
  else:
    fws = [args.framework]
  for fw in fws:
    run_framework(fw, inputs)
  return 0


if __name__ == "__main__":
  sys.exit(main())
