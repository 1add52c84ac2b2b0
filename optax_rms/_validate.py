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

The checks that run when a state meets its optimizer (at init and update)
live in `_checks`.
"""

from __future__ import annotations

import math
import numbers
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


# The wrappers' arguments: an inner transformation, int options bounded by
# the int32 step counters.

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
      f"update), got {_type_name(inner)} {_brief(inner)}{hint}."
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


def _type_name(x: Any) -> str:
  """A value's type for an error message (module-qualified but builtins)."""
  module = type(x).__module__
  name = type(x).__qualname__
  return name if module == "builtins" else f"{module}.{name}"


def _brief(x: Any) -> str:
  text = repr(x)
  return text if len(text) <= 120 else text[:117] + "..."
