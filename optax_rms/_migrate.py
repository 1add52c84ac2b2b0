"""Switch from ``optax.rmsprop`` to ``optax_rms.rmsprop`` in the middle of a run.

``optax.rmsprop`` keeps its state as a chain of three: the statistics
(``ScaleByRmsState`` or, centered, ``ScaleByRStdDevState``; their
``...WithCountState`` forms with ``bias_correction``), the learning rate
(``EmptyState`` for a number, ``ScaleByScheduleState`` for a schedule) and the
momentum (``EmptyState``, or ``TraceState``). ``optax_rms.rmsprop`` keeps the
same buffers in one :class:`~optax_rms.RMSPropState`. The conversion moves the
arrays; it computes nothing, so the converted run continues exactly.
"""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax._src import transform as _transform

from optax_rms import _validate
from optax_rms._rmsprop import RMSPropState
from optax_rms._types import ArrayLike

# The typed states of optax.rmsprop's chain (optax 0.2.x) -> their fields.
_STATISTICS = (
  optax.ScaleByRmsState,  # nu
  _transform.ScaleByRmsWithCountState,  # count, nu (bias_correction)
  optax.ScaleByRStdDevState,  # mu, nu (centered)
  _transform.ScaleByRStdDevWithCountState,  # count, mu, nu (both)
)
_LEARNING_RATE = (optax.EmptyState, optax.ScaleByScheduleState)  # ScaleState
_MOMENTUM = (optax.EmptyState, optax.TraceState)
# The same by field names, for a checkpoint restored without a target (orbax
# then gives a list of dicts, and None for an EmptyState).
_STATISTICS_FIELDS: tuple[set[str], ...] = (
  {"nu"},
  {"count", "nu"},
  {"mu", "nu"},
  {"count", "mu", "nu"},
)
_LEARNING_RATE_FIELDS: tuple[set[str], ...] = (set(), {"count"})
_MOMENTUM_FIELDS: tuple[set[str], ...] = (set(), {"trace"})

_EXPECTED = (
  "optax.rmsprop's state: a tuple of three, (ScaleByRmsState or "
  "ScaleByRStdDevState (or their WithCount forms), EmptyState or "
  "ScaleByScheduleState, EmptyState or TraceState), or the list of three dicts "
  "(None for an EmptyState) that orbax restores without a target"
)


def _fields(
  part: Any, position: str, types: tuple[type, ...], names: tuple[set[str], ...]
) -> dict[str, Any]:
  """The fields of one element of the chain's state, checked against optax's."""
  if part is None:  # EmptyState, restored by orbax without a target
    fields: dict[str, Any] = {}
  elif isinstance(part, tuple) and hasattr(part, "_fields"):
    if not isinstance(part, types):
      raise ValueError(
        f"from_optax_rmsprop_state: the {position} element of the state is a "
        f"{type(part).__name__}, not one of "
        f"{', '.join(t.__name__ for t in types)}; expected {_EXPECTED}."
      )
    fields = dict(zip(part._fields, part, strict=True))
  elif isinstance(part, Mapping):
    fields = dict(part)
  else:
    raise ValueError(
      f"from_optax_rmsprop_state: the {position} element of the state is a "
      f"{type(part).__name__}; expected {_EXPECTED}."
    )
  if set(fields) not in names:
    raise ValueError(
      f"from_optax_rmsprop_state: the {position} element of the state has the "
      f"fields {sorted(fields)}, not those of optax.rmsprop's (one of "
      f"{', '.join(str(sorted(n)) for n in names)}); expected {_EXPECTED}."
    )
  return fields


def _as_count(value: Any, what: str) -> jax.Array:
  count = jnp.asarray(value)
  if count.shape != () or not jnp.issubdtype(count.dtype, jnp.integer):
    raise ValueError(
      f"from_optax_rmsprop_state: {what} must be an integer scalar, got "
      f"{count.dtype} with shape {count.shape}."
    )
  return count.astype(jnp.int32)


def _count_argument(count: Any) -> jax.Array:
  """The ``count`` argument as an int32 scalar, checked at the call.

  A known value (a Python or NumPy int, a concrete array) must be in
  ``[0, 2**31 - 1]``, the range of the int32 step counter; a traced one is
  taken as it is.
  """
  if not isinstance(count, jax.core.Tracer):
    value = np.asarray(count)
    if value.shape == () and jnp.issubdtype(value.dtype, jnp.integer):
      _validate.check_int_in(
        "count", int(value), low=0, what="optax_rms.from_optax_rmsprop_state"
      )
  return _as_count(count, "count")


def _concrete(x: jax.Array) -> bool:
  return not isinstance(x, jax.core.Tracer)


def from_optax_rmsprop_state(
  optax_state: Any, *, count: ArrayLike | None = None
) -> RMSPropState:
  """The :class:`~optax_rms.RMSPropState` that continues an ``optax.rmsprop`` run.

  Build ``optax_rms.rmsprop`` with the same arguments as the ``optax.rmsprop``
  that made ``optax_state`` and continue from the converted state: the updates
  are those ``optax.rmsprop`` would have made (bit for bit under ``jax.jit``
  in our tests, for every variant: plain, centered, momentum, Nesterov, bias
  correction, a number or a schedule as the learning rate). The buffers are
  moved, not copied or cast: ``nu``, ``mu`` and the momentum trace keep optax's
  dtypes (for float16 parameters optax keeps float16 statistics, where
  ``optax_rms.rmsprop`` would start float32 ones).

  Which variant made the state is read from its types (or, for a checkpoint
  that orbax restored without a target, from its field names): centered
  states hold ``mu``, momentum ones a ``TraceState``. Hyperparameters
  (``decay``, ``eps``, ``momentum``, ``nesterov``, ...) are not in optax's
  state: pass them to ``optax_rms.rmsprop`` as they were.

  Args:
    optax_state: the state of an ``optax.rmsprop`` (the chain's tuple of three,
      as ``init``/``update`` return it or as restored with that state as the
      target), or the list of three dicts orbax restores without a target.
      For an optax wrapper's state (``inject_hyperparams``, ``MultiSteps``,
      ``apply_if_finite``), pass its inner state.
    count: the steps taken so far. optax keeps a count only for a schedule
      (``ScaleByScheduleState``) or ``bias_correction``; then that count is
      used (and ``count``, if given, must equal it). Otherwise ``count`` is
      used, default 0: with a constant learning rate and no bias correction
      the count changes nothing in ``optax_rms.rmsprop``'s update (it is
      there for schedules and bias correction).

  Returns:
    An ``RMSPropState`` with optax's ``nu`` (and ``mu``, centered, and the
    momentum trace as ``momentum``), ready for ``optax_rms.rmsprop``'s
    ``update``.

  Raises:
    ValueError: ``optax_state`` is not an ``optax.rmsprop`` state, its
      counts disagree with each other or with ``count``, or ``count`` is
      not an integer scalar in ``[0, 2**31 - 1]`` (the int32 step counter's
      range).

  Examples:
    >>> import jax.numpy as jnp, optax, optax_rms
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> grads = {"w": jnp.array([0.5, 0.25])}
    >>> old = optax.rmsprop(0.1, momentum=0.9)
    >>> old_state = old.init(params)
    >>> _, old_state = old.update(grads, old_state)  # one step with optax
    >>> state = optax_rms.from_optax_rmsprop_state(old_state)
    >>> print(sorted(k for k, v in state._asdict().items() if v is not None))
    ['count', 'momentum', 'nu']
    >>> new = optax_rms.rmsprop(0.1, momentum=0.9)  # the same arguments
    >>> ours, _ = new.update(grads, state)
    >>> theirs, _ = old.update(grads, old_state)
    >>> print(f"{ours['w'][0]:.6f} {theirs['w'][0]:.6f}")
    -0.514021 -0.514021
  """
  if not isinstance(optax_state, (tuple, list)) or len(optax_state) != 3:
    hint = ""
    if hasattr(optax_state, "inner_state"):
      hint = f" For a {type(optax_state).__name__}, pass its .inner_state."
    raise ValueError(
      f"from_optax_rmsprop_state: got a {type(optax_state).__name__}"
      + (
        f" of length {len(optax_state)}"
        if isinstance(optax_state, (tuple, list))
        else ""
      )
      + f"; expected {_EXPECTED}.{hint}"
    )
  statistics = _fields(optax_state[0], "first", _STATISTICS, _STATISTICS_FIELDS)
  learning_rate = _fields(
    optax_state[1], "second", _LEARNING_RATE, _LEARNING_RATE_FIELDS
  )
  momentum = _fields(optax_state[2], "third", _MOMENTUM, _MOMENTUM_FIELDS)

  counts = {
    what: _as_count(fields["count"], what)
    for what, fields in (
      ("the statistics' count (bias_correction)", statistics),
      ("the schedule's count (ScaleByScheduleState)", learning_rate),
    )
    if "count" in fields
  }
  if count is not None:
    counts["count"] = _count_argument(count)
  values = list(counts.values())
  if all(map(_concrete, values)) and len({int(c) for c in values}) > 1:
    found = ", ".join(f"{what} = {int(c)}" for what, c in counts.items())
    raise ValueError(
      f"from_optax_rmsprop_state: the step counts disagree: {found}. A state "
      "made by one optax.rmsprop advances them together."
    )
  return RMSPropState(
    count=values[0] if values else jnp.zeros([], jnp.int32),
    nu=statistics["nu"],
    mu=statistics.get("mu"),
    momentum=momentum.get("trace"),
  )
