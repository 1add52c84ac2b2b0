"""Construction-time validation of hyperparameters.

Everything here runs once, in Python, when an optimizer is built. Values that
are not known yet (tracers, as `optax.inject_hyperparams` passes them inside
`jit`) and device arrays (reading them would force a host sync, and
`inject_hyperparams` rebuilds the optimizer on every step) are accepted
unchecked.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _known_value(name: str, value: Any) -> float | None:
  """Returns `value` as a Python float when it is known on the host, else None.

  Raises TypeError for things that can never be a scalar hyperparameter.
  """
  if isinstance(value, jax.Array):  # tracer or device array: not read
    if value.ndim != 0:
      raise ValueError(f"{name} must be a scalar, got an array of shape {value.shape}.")
    return None
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a number, got the bool {value!r}.")
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, np.ndarray) or isinstance(value, np.generic):
    if value.ndim != 0:
      raise ValueError(f"{name} must be a scalar, got an array of shape {value.shape}.")
    if not np.issubdtype(value.dtype, np.number):
      raise TypeError(f"{name} must be a number, got dtype {value.dtype}.")
    return float(value)
  raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.")


def check_range(
  name: str,
  value: Any,
  *,
  low: float,
  high: float = math.inf,
  low_open: bool = False,
  high_open: bool = False,
) -> None:
  """Raises ValueError unless `low <= value <= high` (bounds open as asked).

  Non-finite values are always rejected.
  """
  x = _known_value(name, value)
  if x is None:
    return
  lo = "(" if low_open else "["
  hi = ")" if high_open else "]"
  allowed = f"{lo}{low:g}, {high:g}{hi}"
  ok = (
    math.isfinite(x)
    and (x > low if low_open else x >= low)
    and (x < high if high_open else x <= high)
  )
  if not ok:
    raise ValueError(f"{name} must be a finite number in {allowed}, got {x!r}.")


def check_scalar_or_schedule(name: str, value: Any, *, low: float = 0.0) -> None:
  """Checks a constant, or a schedule's value at step 0, is finite and >= low.

  A schedule is evaluated once, here, at step 0: that catches the common
  mistakes (a negative or NaN learning rate, a schedule of the wrong shape)
  before any step is taken. Later steps are not checked.
  """
  if callable(value):
    value0 = value(0)
    if isinstance(value0, jax.core.Tracer):
      return
    shape = np.shape(value0)
    if shape != ():
      raise ValueError(
        f"{name} schedule must return a scalar, got shape {shape} at step 0."
      )
    if isinstance(value0, jax.Array):
      value0 = np.asarray(value0)  # Construction time, not inside `update`.
    check_range(f"{name} (schedule at step 0)", value0, low=low)
    return
  check_range(name, value, low=low)


def check_int(name: str, value: Any, *, low: int, allowed: str) -> int:
  """Returns ``value`` as an int; TypeError unless an int (not a bool),
  ValueError below ``low``. ``allowed`` says what is, for the message."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}.")
  if value < low:
    raise ValueError(f"{name} must be {allowed}, got {value!r}.")
  return int(value)


def check_bool(name: str, value: Any) -> None:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}.")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


def canonical_dtype(name: str, dtype: Any, *, allow_complex: bool) -> jnp.dtype | None:
  """Returns `dtype` as a floating (or complex) `jnp.dtype`, None for None."""
  if dtype is None:
    return None
  if isinstance(dtype, (jax.Array, np.ndarray)):
    raise ValueError(
      f"{name} must be a dtype such as 'float32', got an array. Under "
      "optax.inject_hyperparams pass the dtype as a string, or list "
      f"{name!r} in static_args (dtype classes are callables, which "
      "inject_hyperparams takes for schedules)."
    )
  try:
    dt = jnp.dtype(dtype)
  except TypeError as e:
    raise ValueError(f"{name} must be a dtype, got {dtype!r} ({e}).") from None
  kinds = (jnp.floating, jnp.complexfloating) if allow_complex else (jnp.floating,)
  if not any(jnp.issubdtype(dt, k) for k in kinds):
    allowed = "floating or complex" if allow_complex else "floating"
    raise ValueError(f"{name} must be a {allowed} dtype, got {dt}.")
  return dt


def _shape(x: Any) -> tuple[int, ...]:
  shape = getattr(x, "shape", None)
  return tuple(shape) if shape is not None else np.shape(x)


def check_same_structure(what: str, updates: Any, state_tree: Any) -> Any:
  """Returns the treedef of `updates`, after checking `state_tree` shares it."""
  treedef = jax.tree.structure(updates)
  state_treedef = jax.tree.structure(state_tree)
  if treedef != state_treedef:  # type: ignore[operator]
    raise ValueError(
      f"{what}: the gradient tree does not match the optimizer state's "
      f"tree (was the state initialised from other parameters?).\n"
      f"  gradients: {treedef}\n  state:     {state_treedef}"
    )
  return treedef


def check_params_inexact(what: str, params: Any) -> None:
  """Raises TypeError naming the first integer or boolean parameter leaf."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    dtype = getattr(leaf, "dtype", None) or np.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
        f"{what}: parameter {jax.tree_util.keystr(path)} has dtype {dtype}; "
        "RMSprop needs floating-point (or complex) parameters. Cast it, or "
        "exclude it with optax.masked / optax.multi_transform."
      )


def resolve_mask(
  mask: Any | Callable[[Any], Any] | None, params: Any
) -> list[bool] | None:
  """Returns the weight-decay mask as a flat list of bools, one per leaf."""
  if mask is None:
    return None
  tree = mask(params) if callable(mask) else mask
  try:
    full = jax.tree.broadcast(tree, params)
  except ValueError as e:
    raise ValueError(
      "weight_decay_mask does not match the parameters' tree (it must be a "
      "prefix of it). Under optax_rms.pack_small the optimizer sees the "
      "packed tree: mask outside it (optax.masked / optax.multi_transform)."
      f"\n{e}"
    ) from None
  flags = jax.tree.leaves(full)
  for flag in flags:
    if not isinstance(flag, (bool, np.bool_)):
      raise TypeError(
        "weight_decay_mask leaves must be Python bools (a static choice per "
        f"parameter, as in optax.masked), got {type(flag).__name__}."
      )
  return [bool(f) for f in flags]


def check_quantization(
  buffer: str, quantization: Any, dtype: Any, needs: tuple[str, Any] | None
) -> str:
  """Validates ``<buffer>_quantization``; returns the buffer's storage form.

  `needs`: the option that makes the buffer exist, and its value (None: the
  buffer always exists).
  """
  name = f"{buffer}_quantization"
  if quantization is None:
    return "float"
  check_choice(name, quantization, ("8bit",))
  if needs is not None and (needs[1] is None or needs[1] is False):
    raise ValueError(
      f"{name}={quantization!r} quantizes the {buffer} buffer, which exists "
      f"only with {needs[0]}; got {needs[0].split('=')[0]}={needs[1]!r}."
    )
  if dtype is not None:
    raise ValueError(
      f"{name}={quantization!r} stores {buffer} as uint8 codes; it cannot be "
      f"combined with {buffer}_dtype={dtype!r}."
    )
  return "log8" if buffer == "nu" else "signed8"


def check_params_real(what: str, params: Any, option: str) -> None:
  """Raises TypeError naming the first complex parameter leaf."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    dtype = getattr(leaf, "dtype", None) or np.result_type(leaf)
    if jnp.issubdtype(dtype, jnp.complexfloating):
      raise TypeError(
        f"{what}: parameter {jax.tree_util.keystr(path)} is complex ({dtype}); "
        f"{option} stores real 8-bit codes. Keep that buffer in a float dtype "
        "for complex parameters."
      )


def check_state(
  what: str,
  state: Any,
  *,
  centered: bool,
  has_momentum: bool,
  forms: dict[str, str] | None = None,
) -> None:
  """Checks the state was made by an optimizer of this configuration.

  Catches a state restored from another configuration (centered or not, with
  or without momentum, 8-bit or not), with a message naming the option. Its
  trees and shapes against the gradients: :func:`check_state_matches`.
  """
  forms = forms or {}
  eight_bit = lambda buffer: forms.get(buffer, "float") != "float"
  for field, wanted, option in (
    ("mu", centered, "centered=True"),
    ("momentum", has_momentum, "momentum"),
    ("nu_scale", eight_bit("nu"), "nu_quantization='8bit'"),
    ("mu_scale", centered and eight_bit("mu"), "mu_quantization='8bit'"),
    (
      "momentum_scale",
      has_momentum and eight_bit("momentum"),
      "momentum_quantization='8bit'",
    ),
  ):
    present = getattr(state, field, None) is not None
    if present != wanted:
      made = "with" if present else "without"
      raise ValueError(
        f"{what}: the state has {'a' if present else 'no'} {field!r} buffer: "
        f"it was made by an optimizer {made} {option}, but this one is "
        f"{'not ' if not wanted else ''}configured with it. Re-create the "
        "state with this optimizer's init, or build the optimizer that made it."
      )


def check_state_matches(what: str, updates: Any, state: Any) -> None:
  """Checks the state's buffers have the gradients' tree and shapes.

  Catches a state initialised from other parameters, with a message naming
  the first mismatching leaf. Trees and shapes are static, so the update
  calls this while it is traced (in its jitted body): once per signature,
  not on every eager call.
  """
  grad_leaves, treedef = jax.tree.flatten(updates)
  grad_shapes = [_shape(g) for g in grad_leaves]
  for field in ("nu", "mu", "momentum"):
    tree = getattr(state, field, None)
    if tree is None:
      continue
    leaves, state_treedef = jax.tree.flatten(tree)
    if state_treedef != treedef:  # type: ignore[operator]
      check_same_structure(what, updates, tree)  # raises, naming both trees
    shapes = [_shape(s) for s in leaves]
    if shapes == grad_shapes:
      continue
    paths = jax.tree_util.tree_leaves_with_path(tree)
    for (path, _), shape, grad_shape in zip(paths, shapes, grad_shapes, strict=True):
      if shape != grad_shape:
        raise ValueError(
          f"{what}: state.{field}{jax.tree_util.keystr(path)} has shape "
          f"{shape} but its gradient has shape {grad_shape} (was the "
          "state initialised from other parameters?)."
        )
