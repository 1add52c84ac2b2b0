"""What an `rmsprop` / `scale_by_rms` was built with, resolved once.

`resolve` turns the validated keyword arguments into one frozen, hashable
:class:`Config` (everything that shapes the update's graph: it is part of the
jit cache's key) and a dict of the hyperparameters that are arrays (from
``optax.inject_hyperparams``: arguments of the compiled step, never part of
its key). Python-number hyperparameters are in ``Config.constants``: they are
compiled into the step as constants (see ``_rmsprop._apply``).

The dtypes each state buffer is stored in are decided here too
(:meth:`Config.state_dtype`): `init` makes the buffers in them and `update`
checks a restored state against them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from optax_rms import _quantize

BUFFERS = ("nu", "mu", "momentum")


@dataclasses.dataclass(frozen=True)
class Config:
  """One optimizer's configuration (hashable: the jit cache's key).

  Attributes:
    name: the optimizer's public name, for error messages.
    learning_rate_schedule: the learning rate when it is a schedule, else
      None (a number in ``constants`` or an array argument).
    has_learning_rate: False for ``scale_by_rms``: no learning rate, no sign
      flip.
    weight_decay_schedule: as ``learning_rate_schedule``, for weight decay.
    weight_decay_mode: "coupled" or "decoupled", or None: no weight decay.
    weight_decay_mask: as given (a tree, a function of the params or None);
      resolved per call into one flag per leaf, which the call's key holds.
    eps_in_sqrt ... maximize: the boolean options of ``rmsprop``.
    forms: each buffer's storage form (``_quantize.FORMS``), in BUFFERS order.
    dtypes: each buffer's requested float dtype (None: the default).
    constants: the hyperparameters given as Python numbers, (name, value).
    check_hyperparams: checkify checks of the other hyperparameters.
    initial_scale: ``nu``'s initial value (only ``init`` reads it).
  """

  name: str
  learning_rate_schedule: Callable[[jax.Array], Any] | None
  has_learning_rate: bool
  weight_decay_schedule: Callable[[jax.Array], Any] | None
  weight_decay_mode: str | None
  weight_decay_mask: Any = dataclasses.field(compare=False)
  eps_in_sqrt: bool = True
  centered: bool = False
  has_momentum: bool = False
  nesterov: bool = False
  bias_correction: bool = False
  lr_in_momentum: bool = True
  maximize: bool = False
  forms: tuple[str, str, str] = ("float", "float", "float")
  dtypes: tuple[Any, Any, Any] = (None, None, None)
  constants: tuple[tuple[str, float], ...] = ()
  check_hyperparams: bool = False
  initial_scale: Any = dataclasses.field(default=0.0, compare=False)

  @property
  def buffers(self) -> tuple[str, ...]:
    """The state buffers this configuration keeps, in BUFFERS order."""
    return ("nu",) + ("mu",) * self.centered + ("momentum",) * self.has_momentum

  def form(self, buffer: str) -> str:
    return self.forms[BUFFERS.index(buffer)]

  @property
  def eight_bit(self) -> bool:
    return any(self.form(b) != "float" for b in self.buffers)

  @property
  def variance_in_nu(self) -> bool:
    """Centered with nu or mu in 8 bits: nu holds the centered variance
    itself (bias-corrected numerator ``b * (nu_hat - |mu_hat|^2)`` with bias
    correction), since few-percent codes of nu and mu could not resolve
    their difference where the mean dominates."""
    return self.centered and (self.form("nu") != "float" or self.form("mu") != "float")

  def codec(self, buffer: str) -> _quantize.Codec:
    return _quantize.codec(self.form(buffer))

  def state_dtype(self, param_dtype: Any, field: str) -> jnp.dtype:
    """The dtype init gives state field `field` for a `param_dtype` leaf."""
    if field.endswith("_scale"):  # 8-bit per-block maxima
      return jnp.dtype(jnp.float32)
    requested = self.dtypes[BUFFERS.index(field)]
    if self.form(field) != "float":
      return jnp.dtype(self.codec(field).stored_dtype(None))
    if field == "nu":
      return statistic_dtype(param_dtype, requested)
    return buffer_dtype(param_dtype, requested, statistic=field == "mu")


def statistic_dtype(param_dtype: Any, requested: jnp.dtype | None) -> jnp.dtype:
  """Default dtype of nu (and of mu, whose square enters the variance).

  The parameter's real dtype, as optax, except float16: squares of gradients
  above 256 overflow it and below ~2.4e-4 underflow (and eps=1e-8 itself
  rounds to 0), so its statistics are kept in float32. bfloat16 has float32's
  exponent range and keeps its own dtype. float64 becomes float32 unless x64.
  """
  if requested is not None:
    return requested
  real = jnp.finfo(param_dtype).dtype  # complex64 -> float32
  if real == jnp.float16:
    return jnp.dtype(jnp.float32)
  return jax.dtypes.canonicalize_dtype(real)


def buffer_dtype(
  param_dtype: Any, requested: jnp.dtype | None, *, statistic: bool = False
) -> jnp.dtype:
  """Dtype of mu/momentum: as requested, made complex for complex params."""
  is_complex = jnp.issubdtype(param_dtype, jnp.complexfloating)
  if requested is None:
    if statistic and not is_complex:
      return statistic_dtype(param_dtype, None)
    return jax.dtypes.canonicalize_dtype(param_dtype)
  if is_complex:
    return jnp.promote_types(requested, jnp.complex64)
  return requested


def math_dtype(stored: Any) -> jnp.dtype:
  """The real dtype a stored buffer enters the math in (8-bit codes: float32)."""
  if not jnp.issubdtype(stored, jnp.inexact):
    return jnp.dtype(jnp.float32)
  return jnp.dtype(jnp.finfo(stored).dtype)


def _is_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def resolve(
  *,
  name: str,
  learning_rate: Any,
  decay: Any,
  eps: Any,
  momentum: Any,
  weight_decay: Any,
  **options: Any,
) -> tuple[Config, dict[str, Any]]:
  """(Config, array hyperparameters) of validated keyword arguments.

  ``learning_rate=None``: no learning rate and no sign flip (scale_by_rms).
  A literal 0 weight decay switches it off; anything else (a schedule, an
  array from inject_hyperparams) keeps it in the graph. `options`: the
  remaining Config fields, except ``weight_decay_mode``, which is dropped
  when weight decay is off.
  """
  use_wd = weight_decay is not None and not (
    _is_number(weight_decay) and weight_decay == 0
  )
  values = {
    "decay": decay,
    "eps": eps,
    "momentum": momentum,
    "learning_rate": None if callable(learning_rate) else learning_rate,
    "weight_decay": None if callable(weight_decay) or not use_wd else weight_decay,
  }
  constants = tuple((k, float(v)) for k, v in values.items() if _is_number(v))
  arrays = {k: v for k, v in values.items() if k not in dict(constants)}
  mode = options.pop("weight_decay_mode")
  config = Config(
    name=name,
    learning_rate_schedule=learning_rate if callable(learning_rate) else None,
    has_learning_rate=learning_rate is not None,
    weight_decay_schedule=weight_decay if callable(weight_decay) else None,
    weight_decay_mode=mode if use_wd else None,
    has_momentum=momentum is not None,
    constants=constants,
    **options,
  )
  return config, arrays
