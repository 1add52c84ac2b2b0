r"""An exponential moving average of the parameters, kept in the optimizer state.

Evaluating (and saving) a moving average of the weights rather than the
weights themselves is common in image recipes (Polyak & Juditsky 1992; the
EfficientNet and MobileNet TPU recipes keep one with decay 0.9999). Keras 3
builds it into its optimizers (``use_ema``, ``ema_momentum``,
``ema_overwrite_frequency``); `ema_params` is the same thing as an optax
wrapper around any transformation, and `get_ema_params` reads the average
back out of the state (what Keras' ``finalize_variable_values`` writes into
the model at the end of ``fit``).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_rms import _checks, _validate
from optax_rms._types import (
  Array,
  ArrayLike,
  GradientTransformation,
  GradientTransformationExtraArgs,
  OptState,
  Params,
)


class EmaParamsState(NamedTuple):
  """State of `ema_params`.

  Attributes:
    count: calls to ``update`` so far, an int32 scalar (it saturates instead of
      overflowing).
    ema: the moving average of the parameters after each update, shaped and
      typed like the parameters (it starts as a copy of them).
    inner_state: the state of the wrapped transformation.
  """

  count: Array  # type: ignore[assignment]  # shadows tuple.count
  ema: Params
  inner_state: OptState


def ema_params(
  inner: GradientTransformation,
  decay: ArrayLike = 0.99,
  overwrite_every: int | None = None,
  *,
  accumulation_steps: int = 1,
) -> GradientTransformationExtraArgs:
  """Keeps an exponential moving average of the parameters in the state.

  After each update of ``inner``, with ``p'`` the parameters it
  leads to (``optax.apply_updates(params, updates)``) and ``i`` the
  number of applied steps before this one:

  ::

      m   = 0 if i == 0 else decay
      ema = m * ema + (1 - m) * p'

  so the average starts at the parameters after the first step (no bias
  correction is needed), as Keras 3's optimizers do with ``use_ema=True``.
  The average is in the parameters' dtype (``m`` too, as in Keras).
  Read it with `get_ema_params`, e.g. to evaluate or save the averaged model.

  With ``overwrite_every=N``, the parameters are replaced by the average
  after every ``N``-th applied step (where ``(i + 1) mod N = 0``;
  Keras' ``ema_overwrite_frequency``): the returned updates are then
  ``ema - p``, so ``optax.apply_updates`` lands on the
  average up to one rounding of that difference (none when the two are
  within a factor 2 of each other, by Sterbenz' lemma).

  ``accumulation_steps=k`` is for an ``inner`` that applies an update only
  every ``k``-th call (``optax.MultiSteps``, ``compat.keras``'s
  ``gradient_accumulation_steps``): the average is still updated on every
  call, as in Keras, but ``i`` counts applied steps, ``count // k``.
  Keras tests the overwrite on every call too, so the parameters are
  overwritten on each of the ``k`` calls of the ``N``-th
  accumulation window (the first of which is before that window's update).

  References:
    Polyak & Juditsky, "Acceleration of stochastic approximation by
    averaging", SIAM J. Control Optim. 30(4), 1992.
    Keras 3, ``keras/src/optimizers/base_optimizer.py``
    (``_update_model_variables_moving_average``) and
    ``keras/src/backend/jax/optimizer.py``.

  Args:
    inner: the transformation whose parameters are averaged.
    decay: the average's decay, in [0, 1] (Keras' ``ema_momentum``).
    overwrite_every: replace the parameters by the average every this many
      applied steps (an int in ``[1, 2**31 - 1]``, the step counter's range),
      or never (None).
    accumulation_steps: calls per applied step of ``inner`` (an int in
      ``[1, 2**31 - 1]``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    `EmaParamsState`; ``update`` needs ``params``, and passes extra
    arguments to ``inner``.

  Raises:
    TypeError: ``inner`` is not a transformation, or ``overwrite_every`` /
      ``accumulation_steps`` not an int; at ``update``, a state that is not
      an `EmaParamsState`.
    ValueError: ``decay``, ``overwrite_every`` or ``accumulation_steps`` out
      of its range.

  Examples:
    >>> import jax.numpy as jnp, optax, optax_rms
    >>> tx = optax_rms.ema_params(optax.sgd(0.1), decay=0.5)
    >>> params = {"w": jnp.array([1.0])}
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update({"w": jnp.array([1.0])}, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> w, ema = params["w"][0], optax_rms.get_ema_params(state)["w"][0]
    >>> print(f"{w:.3f} {ema:.3f}")  # ema = 0.5 * 0.9 + 0.5 * 0.8
    0.800 0.850
  """
  name = "optax_rms.ema_params"
  _validate.check_inner(name, inner)
  _validate.check_range("decay", decay, low=0.0, high=1.0)
  if overwrite_every is not None:
    overwrite_every = _validate.check_int_in(
      "overwrite_every", overwrite_every, low=1, what=name
    )
  accumulation_steps = _validate.check_int_in(
    "accumulation_steps", accumulation_steps, low=1, what=name
  )
  inner = optax.with_extra_args_support(inner)

  def init_fn(params: optax.Params) -> EmaParamsState:
    return EmaParamsState(
      count=jnp.zeros([], jnp.int32),
      ema=jax.tree.map(lambda p: jnp.array(p, copy=True), params),
      inner_state=inner.init(params),
    )

  def update_fn(
    updates: optax.Updates,
    state: EmaParamsState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, EmaParamsState]:
    _checks.check_wrapper_state(name, state, EmaParamsState)
    if params is None:
      raise ValueError(
        f"{name} averages the parameters: call update(grads, state, params)."
      )
    updates, inner_state = inner.update(
      updates, state.inner_state, params, **extra_args
    )
    new_params = optax.apply_updates(params, updates)
    applied = state.count // accumulation_steps  # applied steps before this one

    def average(ema: jax.Array, new: jax.Array) -> jax.Array:
      # Keras' arithmetic: m = cast(i != 0) * momentum, in the params' dtype.
      m = jnp.asarray(applied != 0, new.dtype) * decay
      return jnp.asarray(m * ema + (1 - m) * new).astype(ema.dtype)

    ema = jax.tree.map(average, state.ema, new_params)
    if overwrite_every is not None:
      overwrite = (applied + 1) % overwrite_every == 0
      updates = jax.tree.map(
        lambda u, e, p: jnp.where(overwrite, (e - p).astype(u.dtype), u),
        updates,
        ema,
        params,
      )
    return updates, EmaParamsState(
      count=optax.safe_increment(state.count), ema=ema, inner_state=inner_state
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def get_ema_params(state: OptState) -> Params:
  """The moving average of the parameters kept by `ema_params` in ``state``.

  ``state`` may be `ema_params`' own state or any state holding exactly one
  (an ``optax.chain``, ``optax.inject_hyperparams``, ``compat.keras`` with
  ``use_ema=True``, ...). Evaluate or save these instead of the parameters
  at the end of training, as Keras' ``finalize_variable_values`` does.

  Args:
    state: an optimizer state.

  Returns:
    The average, a pytree shaped like the parameters.

  Raises:
    ValueError: ``state`` holds no `EmaParamsState`, or more than one.

  Examples:
    >>> import jax.numpy as jnp, optax, optax_rms
    >>> tx = optax.chain(optax.clip(1.0), optax_rms.ema_params(optax.sgd(0.1)))
    >>> state = tx.init({"w": jnp.ones(2)})
    >>> optax_rms.get_ema_params(state)["w"].shape
    (2,)
  """
  is_ema = lambda x: isinstance(x, EmaParamsState)  # noqa: E731
  found = [s for s in jax.tree.leaves(state, is_leaf=is_ema) if is_ema(s)]
  if len(found) != 1:
    raise ValueError(
      f"get_ema_params: the state holds {len(found)} EmaParamsState, not one "
      "(wrap the transformation in optax_rms.ema_params, or use "
      "compat.keras(use_ema=True))."
    )
  return found[0].ema
