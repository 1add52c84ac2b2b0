"""Checks of a state, gradients and parameters against their optimizer.

`init` and `update` run these on every call, on types, trees, dtypes and
shapes only (nothing here reads an array's values, except
:func:`checkify_hyperparams`, which emits `checkify` checks into the traced
step). Hyperparameters are validated once, when the optimizer is built, in
`_validate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_rms._validate import FLOAT_DTYPES, _brief, _type_name

# Allowed ranges checked at run time by checkify_hyperparams: (low, high,
# low_open, high_open), as at construction.
_RANGES = {
  "learning_rate": (0.0, math.inf, False, False),
  "weight_decay": (0.0, math.inf, False, False),
  "decay": (0.0, 1.0, False, True),
  "eps": (0.0, math.inf, True, False),
  "momentum": (0.0, 1.0, False, True),
}


def checkify_hyperparams(
  count: Any, values: dict[str, Any], *, constants: dict[str, float]
) -> None:
  """`jax.experimental.checkify` checks of hyperparameters at step `count`.

  For `rmsprop(..., check_hyperparams=True)`: each value not known when the
  optimizer was built (a schedule's value at this step, an array from
  `inject_hyperparams`' state) must be finite and in its range, or the
  checkified step reports the name, the value and the step. Python numbers
  (`constants`, checked at construction) and None (switched off) are skipped.
  The step must run under `checkify.checkify`.
  """
  from jax.experimental import checkify

  for name, value in values.items():
    if value is None or name in constants:
      continue
    low, high, low_open, high_open = _RANGES[name]
    x = jnp.asarray(value, jnp.float32)
    ok = jnp.isfinite(x) & ((x > low) if low_open else (x >= low))
    if math.isfinite(high):
      ok &= (x < high) if high_open else (x <= high)
    allowed = (
      f"{'>' if low_open else '>='} {low:g}"
      if math.isinf(high)
      else f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    )
    checkify.check(
      ok,
      f"optax_rms.rmsprop: {name} must be a finite number {allowed}, got {{}} at "
      "step {} (0-based).",
      x,
      count,
    )


def check_state_type(what: str, state: Any, state_type: type) -> None:
  """Raises TypeError unless `state` is a `state_type` (an RMSPropState).

  A dict is what a checkpoint restored without a target gives: the message
  says how to restore one.
  """
  if isinstance(state, state_type):
    return
  qualified = f"optax_rms.{state_type.__name__}"
  if _holds_optax_rmsprop_statistics(state):
    raise TypeError(
      f"{what}: expected an {qualified} (the state this optimizer's init "
      "returns), got optax.rmsprop's state "
      f"({_type_name(state)} {_brief(state)}). Convert a saved optax.rmsprop "
      "state once with optax_rms.from_optax_rmsprop_state(old_state) (it "
      "keeps nu, mu and the momentum trace), then pass the result to update."
    )
  if isinstance(state, dict):
    raise TypeError(
      f"{what}: expected an {qualified}, got a dict with keys "
      f"{sorted(map(str, state))} (a checkpoint restored without a target?). "
      "Restore with the state's structure as the target, e.g. "
      "ckptr.restore(path, jax.eval_shape(tx.init, params)) with orbax, or "
      f"rebuild it with {qualified}(**restored)."
    )
  raise TypeError(
    f"{what}: expected an {qualified} (the state this optimizer's init "
    f"returns), got {_type_name(state)} {_brief(state)}. Was it made by "
    "another optimizer?"
  )


def _holds_optax_rmsprop_statistics(state: Any, *, nested: bool = False) -> bool:
  """Whether `state` is (or holds, in a tuple or list) optax's rmsprop
  statistics: a ScaleByRmsState / ScaleByRStdDevState (or their WithCount
  forms), or, inside the chain's list restored without a target, a dict of
  exactly their fields (a dict alone may be an RMSPropState's)."""
  if isinstance(state, dict):
    return nested and set(state) in (
      {"nu"},
      {"count", "nu"},
      {"mu", "nu"},
      {"count", "mu", "nu"},
    )
  if isinstance(state, tuple) and hasattr(state, "_fields"):
    name = type(state).__name__
    return type(state).__module__.startswith("optax") and name.startswith(
      ("ScaleByRmsState", "ScaleByRmsWithCountState", "ScaleByRStdDev")
    )
  if isinstance(state, (tuple, list)):
    return any(_holds_optax_rmsprop_statistics(x, nested=True) for x in state)
  return False


def check_count(what: str, count: Any) -> None:
  """Raises TypeError unless state.count is an integer scalar."""
  dtype = getattr(count, "dtype", None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(
      f"{what}: state.count must be an int32 scalar (the step counter), got "
      f"{'dtype ' + str(dtype) if dtype is not None else type(count).__name__}. "
      "Re-create the state with this optimizer's init, or restore it with "
      "that state as the target."
    )
  if _shape(count) != ():
    raise ValueError(
      f"{what}: state.count must be a scalar, got shape {_shape(count)}."
    )


def check_gradients_inexact(what: str, updates: Any) -> None:
  """Raises TypeError naming the first integer or boolean gradient leaf."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(updates):
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
        f"{what}: the gradient {jax.tree_util.keystr(path)} has dtype {dtype}; "
        "RMSprop needs floating-point (or complex) gradients."
      )


def check_state_dtypes(
  what: str,
  state: Any,
  reference: Any,
  expected: Callable[[Any, str], Any],
  fields: tuple[str, ...],
) -> None:
  """Checks each buffer of the state has the dtype the configuration gives it.

  `reference` is the tree (parameters, else gradients) whose leaves' dtypes
  the buffers' dtypes follow; `expected(leaf_dtype, field)` is the dtype the
  optimizer's init gives that field for such a leaf. Catches a checkpoint
  from another configuration (bfloat16 state into a float32 optimizer, or
  the reverse), whose dtype would otherwise persist silently.
  """
  ref_leaves = jax.tree.leaves(reference)
  for field in fields:
    tree = getattr(state, field, None)
    if tree is None:
      continue
    for (path, leaf), ref in zip(
      jax.tree_util.tree_leaves_with_path(tree), ref_leaves, strict=True
    ):
      stored = jnp.result_type(leaf)
      leaf_dtype = jnp.result_type(ref)
      wanted = jnp.dtype(expected(leaf_dtype, field))
      if stored != wanted:
        option = f"{field}_dtype"
        rebuild = (
          f"Build the optimizer with the state's dtype ({option}='{stored}'), "
          if field in ("nu", "mu", "momentum") and stored.name in FLOAT_DTYPES
          else ""
        )
        raise TypeError(
          f"{what}: state.{field}{jax.tree_util.keystr(path)} has dtype "
          f"{stored}, but this optimizer keeps it in {wanted} for a "
          f"{leaf_dtype} parameter (a state saved by an optimizer of another "
          f"configuration?). {rebuild}{'c' if rebuild else 'C'}ast the state "
          "to this optimizer's dtypes (jax.tree.map(lambda x, t: "
          "x.astype(t.dtype), state, tx.init(params))), or re-create it with "
          "tx.init. (Gradients in another dtype than the parameters: give "
          "the state dtypes explicitly.)"
        )


def check_params_match(what: str, updates: Any, params: Any) -> None:
  """Raises ValueError unless `params` has the gradients' tree and shapes."""
  treedef = jax.tree.structure(updates)
  params_treedef = jax.tree.structure(params)
  if treedef != params_treedef:  # type: ignore[operator]
    raise ValueError(
      f"{what}: weight_decay needs params with the gradients' tree; the "
      f"params passed to update have another.\n  gradients: {treedef}\n"
      f"  params:    {params_treedef}"
    )
  for (path, p), g in zip(
    jax.tree_util.tree_leaves_with_path(params),
    jax.tree.leaves(updates),
    strict=True,
  ):
    if _shape(p) != _shape(g):
      raise ValueError(
        f"{what}: weight_decay: params{jax.tree_util.keystr(path)} has shape "
        f"{_shape(p)} but its gradient has shape {_shape(g)}."
      )


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


def python_scalars_as_arrays(params: Any) -> Any:
  """Python-number leaves as jax arrays (as optax's init accepts them)."""
  return jax.tree.map(
    lambda p: jnp.asarray(p) if isinstance(p, (int, float, complex)) else p, params
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


# --- The wrappers' contract (host_offload, ema_params, kahan_summation,
# stochastic_rounding, pack_small, compat presets): one refusal for each kind
# of bad input. Kept together, for the wrappers only.


def check_wrapper_state(name: str, state: Any, state_type: type) -> None:
  """TypeError unless ``state`` is a ``state_type`` (the wrapper's own state).

  ``name`` is the wrapper's public name. A dict is what a checkpoint
  restored without a target gives: the message says how to restore one.
  """
  if isinstance(state, state_type):
    return
  qualified = f"optax_rms.{state_type.__name__}"
  if isinstance(state, dict):
    raise TypeError(
      f"{name}: expected the state its init returns, an {qualified}, got a dict "
      f"with keys {sorted(map(str, state))} (a checkpoint restored without a "
      "target?). Restore with the state's structure as the target, e.g. "
      "ckptr.restore(path, jax.eval_shape(tx.init, params)) with orbax."
    )
  raise TypeError(
    f"{name}: expected the state its init returns, an {qualified}, got "
    f"{_type_name(state)} {_brief(state)} (the state of "
    "another transformation, or of the inner one without this wrapper?)."
  )
