"""Construction-time validation of hyperparameters.

Everything here runs once, in Python, when an optimizer is built: Python
numbers, NumPy scalars and concrete (non-traced) jax arrays are read and
checked. Only values that are not known yet are accepted unchecked: tracers,
as `optax.inject_hyperparams` passes them inside `jit` (reading them is
impossible there, and would be a host sync if it were not).

`optax.inject_hyperparams` used eagerly (outside `jit`) rebuilds the optimizer
on every step from concrete arrays, so there each step reads its
hyperparameters on the host (one small transfer per hyperparameter and step,
and a value set out of range in its state is caught at the next step). Under
`jit` nothing is read.

The checks of a state against its optimizer (its type, its buffers' dtypes)
also live here; `update` runs them on every call, on dtypes and shapes only.
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
  if isinstance(value, jax.Array):
    if value.ndim != 0:
      raise ValueError(f"{name} must be a scalar, got an array of shape {value.shape}.")
    if isinstance(value, jax.core.Tracer) or not value.is_fully_addressable:
      return None  # not known yet (inside jit / inject_hyperparams): not read
    value = np.asarray(value)  # construction time: a concrete value is read
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a number, got the bool {value!r}.")
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, np.ndarray) or isinstance(value, np.generic):
    if value.ndim != 0:
      raise ValueError(f"{name} must be a scalar, got an array of shape {value.shape}.")
    if not jnp.issubdtype(value.dtype, jnp.number):  # bfloat16 included
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
  if math.isinf(high):  # "[0, inf]" would contradict "finite": say ">= 0"
    allowed = f"{'>' if low_open else '>='} {low:g}"
  else:
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    allowed = f"in {lo}{low:g}, {high:g}{hi}"
  ok = (
    math.isfinite(x)
    and (x > low if low_open else x >= low)
    and (x < high if high_open else x <= high)
  )
  if not ok:
    raise ValueError(f"{name} must be a finite number {allowed}, got {x!r}.")


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


def check_bool(name: str, value: Any) -> None:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}.")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


# The dtypes the update's math supports: float8 and integer types have no
# arithmetic that RMSprop's squares and square roots can run in.
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
COMPLEX_DTYPES = ("complex64", "complex128")


def canonical_dtype(name: str, dtype: Any, *, allow_complex: bool) -> jnp.dtype | None:
  """Returns `dtype` as a supported floating (or complex) `jnp.dtype`.

  None stays None. Anything else (an unknown name, an integer, a float8 or
  4-bit dtype) raises ValueError listing the allowed dtypes.
  """
  if dtype is None:
    return None
  if isinstance(dtype, (jax.Array, np.ndarray)):
    raise ValueError(
      f"{name} must be a dtype such as 'float32', got an array. Under "
      "optax.inject_hyperparams pass the dtype as a string, or list "
      f"{name!r} in static_args (dtype classes are callables, which "
      "inject_hyperparams takes for schedules)."
    )
  allowed = FLOAT_DTYPES + (COMPLEX_DTYPES if allow_complex else ())
  kind = "floating or complex" if allow_complex else "floating"
  try:
    dt = jnp.dtype(dtype)
  except TypeError as e:
    raise ValueError(
      f"{name} must be a dtype, one of {allowed}, got {dtype!r} ({e})."
    ) from None
  if dt.name not in allowed:
    raise ValueError(f"{name} must be a {kind} dtype, one of {allowed}, got {dt}.")
  return dt


def smallest_normal_bound() -> np.dtype:
  """The widest dtype an update can run in: float64 with x64, else float32.

  eps below this dtype's smallest normal number is refused when the
  optimizer is built; bfloat16 has float32's exponent range, so with x64 off
  this is also the bound for every bfloat16 computation.
  """
  return np.dtype("float64" if jax.config.read("jax_enable_x64") else "float32")


def check_eps_normal(what: str, eps: Any, dtype: Any, *, where: str) -> None:
  """Raises ValueError when eps is below the smallest normal number of `dtype`.

  The step adds eps to the variance (or to its square root) in `dtype`:
  below the smallest normal number eps is subnormal or rounds to 0 there (and
  XLA flushes subnormals to zero on CPUs and GPUs), and a zero gradient then
  gives 0 / 0 = NaN, the very case eps > 0 prevents. `eps` not known yet
  (a tracer) is not checked.
  """
  x = _known_value("eps", eps)
  if x is None:
    return
  compute = jnp.result_type(dtype, eps)
  # Weakly typed Python numbers take the state's dtype; NumPy ones their own.
  if not jnp.issubdtype(compute, jnp.floating):
    compute = jnp.dtype(dtype)
  tiny = float(jnp.finfo(compute).smallest_normal)
  if x < tiny:
    raise ValueError(
      f"{what}: eps={x!r} is below the smallest normal {compute} number "
      f"({tiny:.4g}), the dtype {where}; there it rounds to 0 (or to a "
      f"subnormal that XLA flushes to 0) and a zero gradient gives NaN. Use "
      f"eps >= {tiny:.4g}."
    )


def check_state_type(what: str, state: Any, state_type: type) -> None:
  """Raises TypeError unless `state` is a `state_type` (an RMSPropState).

  A dict is what a checkpoint restored without a target gives: the message
  says how to restore one.
  """
  if isinstance(state, state_type):
    return
  qualified = f"optax_rms.{state_type.__name__}"
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


def _type_name(x: Any) -> str:
  module = type(x).__module__
  name = type(x).__qualname__
  return name if module == "builtins" else f"{module}.{name}"


def _brief(x: Any) -> str:
  text = repr(x)
  return text if len(text) <= 120 else text[:117] + "..."


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


# --- The wrappers' contract (host_offload, ema_params, kahan_summation,
# stochastic_rounding, pack_small, compat presets): one refusal for each kind
# of bad input. Kept together, for the wrappers only.

INT32_MAX = 2**31 - 1  # the largest value of the int32 step counters


def check_inner(name: str, inner: Any) -> None:
  """TypeError unless ``inner`` is an optax transformation.

  ``name`` is the wrapper's public name (``"optax_rms.host_offload"``). An
  optax transformation is anything with callable ``init`` and ``update``
  (``GradientTransformation``, ``GradientTransformationExtraArgs``, or a
  user's own NamedTuple of the two); a common slip is passing the
  constructor (``optax.sgd``) instead of a built one (``optax.sgd(0.1)``).
  """
  methods = (getattr(inner, "init", None), getattr(inner, "update", None))
  if not all(map(callable, methods)):
    hint = ""
    if callable(inner) and not isinstance(inner, type):
      hint = " (a function: call it to build the transformation, e.g. optax.sgd(0.1))"
    raise TypeError(
      f"{name}: inner must be an optax.GradientTransformation (with init and "
      f"update), got {_wrapper_type_name(inner)} {_wrapper_brief(inner)}{hint}."
    )


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
    f"{_wrapper_type_name(state)} {_wrapper_brief(state)} (the state of "
    "another transformation, or of the inner one without this wrapper?)."
  )


def check_int_in(
  name: str, value: Any, *, low: int, high: int | None = INT32_MAX, what: str = ""
) -> int:
  """``value`` as an int; TypeError unless an int (not a bool), ValueError
  outside ``[low, high]`` (``high=None``: no upper bound). The message names
  ``name``, the range and the value, prefixed by ``what`` (the function's
  public name) when given. The default ``high`` is the int32 step counters'
  largest value: a larger count, period or number of steps cannot be
  compared with them on the device."""
  prefix = f"{what}: " if what else ""
  if high is None:
    allowed = f"an int >= {low}"
  else:
    allowed = f"an int in [{low}, {_int_text(high)}]"
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
    raise TypeError(
      f"{prefix}{name} must be {allowed}, got {type(value).__name__} {value!r}."
    )
  number = int(value)
  if number < low or (high is not None and number > high):
    raise ValueError(f"{prefix}{name} must be {allowed}, got {value!r}.")
  return number


def _int_text(n: int) -> str:
  """``2**31 - 1`` for 2147483647 (a power of two less one), else the digits."""
  bits = (n + 1).bit_length() - 1
  return f"2**{bits} - 1" if bits >= 16 and n + 1 == 2**bits else str(n)


def _wrapper_type_name(x: Any) -> str:
  module = type(x).__module__
  name = type(x).__qualname__
  return name if module == "builtins" else f"{module}.{name}"


def _wrapper_brief(x: Any) -> str:
  text = repr(x)
  return text if len(text) <= 120 else text[:117] + "..."
