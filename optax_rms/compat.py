r"""Other frameworks' RMSprop, argument for argument, on optax_rms.rmsprop.

Each constructor takes one framework's own argument names, defaults and
semantics and returns an optax transformation that reproduces that framework's
parameter trajectory step for step (to float32 rounding; see
``tests/goldens``). None of them re-implements the update: they validate their
own arguments, then map them onto :func:`optax_rms.rmsprop`, adding the
framework's gradient preprocessing (rescaling, clipping) in front and, for
MXNet's ``clip_weights``, a clip of the parameters behind.

Learning rates may be numbers or optax schedules of the 0-based step. The
returned update is applied as usual with ``optax.apply_updates``. Where a
preset needs no pre/post-processing it returns the bare ``rmsprop`` (one flat
:class:`optax_rms.RMSPropState`); otherwise an ``optax.chain``, which Keras'
gradient accumulation wraps in ``optax.MultiSteps`` and its ``use_ema`` in
:func:`optax_rms.ema_params`.

The differences between the frameworks are tabulated in ``docs/porting.md``.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_rms import _validate
from optax_rms._ema import ema_params
from optax_rms._rmsprop import rmsprop
from optax_rms._types import GradientTransformationExtraArgs

__all__ = ["keras", "mxnet", "pytorch", "tf1", "timm"]


# State storage (dtypes, 8-bit codes) is no part of any framework's RMSprop:
# every preset passes these keywords through to optax_rms.rmsprop unchanged.
STATE_STORAGE = (
  "nu_dtype",
  "mu_dtype",
  "momentum_dtype",
  "nu_quantization",
  "mu_quantization",
  "momentum_quantization",
)


def _state_storage(preset: str, kwargs: dict[str, Any]) -> dict[str, Any]:
  unknown = sorted(set(kwargs) - set(STATE_STORAGE))
  if unknown:
    raise TypeError(
      f"optax_rms.compat.{preset}() got unexpected keyword argument(s) "
      f"{unknown}; beside the framework's own arguments it takes only the "
      f"state-storage options of optax_rms.rmsprop: {list(STATE_STORAGE)}."
    )
  return kwargs


def _momentum_or_none(momentum: Any) -> Any:
  """Frameworks that keep no buffer for momentum == 0 (a Python number)."""
  if isinstance(momentum, (int, float)) and momentum == 0:
    return None
  return momentum


def _weight_decay_or_none(weight_decay: Any) -> Any:
  if weight_decay is None or (
    isinstance(weight_decay, (int, float)) and weight_decay == 0
  ):
    return None
  return weight_decay


def pytorch(
  lr: optax.ScalarOrSchedule = 0.01,
  alpha: float = 0.99,
  eps: float = 1e-8,
  weight_decay: float = 0,
  momentum: float = 0,
  centered: bool = False,
  maximize: bool = False,
  **state_storage: Any,
) -> GradientTransformationExtraArgs:
  """``torch.optim.RMSprop``.

  Per step (``[- mu**2]`` only when centered)::

      g  = ±g + weight_decay * p
      nu = alpha * nu + (1 - alpha) * g**2
      u  = g / (sqrt(nu [- mu**2]) + eps)
      b  = momentum * b + u;    p = p - lr * b

  eps outside the square root, ``nu`` starts at 0, weight decay is coupled
  (L2, enters the statistics), and the learning rate multiplies the momentum
  buffer *after* it is updated, so a schedule rescales the whole buffer.
  ``momentum=0`` keeps no buffer. Where PyTorch's centered variance rounds
  negative it returns NaN; optax_rms clamps it at 0.

  Complex parameters: PyTorch views them as pairs of reals (one ``nu`` per real
  and imaginary part); optax_rms uses ``|g|^2`` as optax does, so complex
  trajectories differ.

  ``**state_storage``: the state-storage keywords of ``optax_rms.rmsprop``
  (``nu_dtype``, ``mu_dtype``, ``momentum_dtype``, ``nu_quantization``,
  ``mu_quantization``, ``momentum_quantization``) pass through: the framework
  has no such option, and they change how the state is stored, not the
  update's math.

  Examples:
    >>> import optax_rms
    >>> tx = optax_rms.compat.pytorch(lr=1e-2, momentum=0.9, weight_decay=1e-4)
  """
  _validate.check_scalar_or_schedule("lr", lr)
  _validate.check_range("alpha", alpha, low=0.0, high=1.0, high_open=True)
  _validate.check_range("momentum", momentum, low=0.0, high=1.0, high_open=True)
  _validate.check_range("weight_decay", weight_decay, low=0.0)
  return rmsprop(
    lr,
    decay=alpha,
    eps=eps,
    eps_in_sqrt=False,
    centered=centered,
    momentum=_momentum_or_none(momentum),
    lr_in_momentum=False,
    weight_decay=_weight_decay_or_none(weight_decay),
    weight_decay_mode="coupled",
    maximize=maximize,
    **_state_storage("pytorch", state_storage),
  )


def _clip_each_by_norm(max_norm: float) -> optax.GradientTransformation:
  """Keras ``clipnorm``: each gradient array's own L2 norm is capped."""

  def update_fn(updates, state, params=None):
    del params

    def clip(g):
      norm = jnp.sqrt(jnp.sum(jnp.square(g)))
      return g * (max_norm / jnp.maximum(norm, max_norm)).astype(g.dtype)

    return jax.tree.map(clip, updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _divide(divisor: float) -> optax.GradientTransformation:
  """Keras' ``g / divisor`` (a division: multiplying by 1/divisor rounds
  differently when the divisor is not a power of 2)."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda g: g / divisor, updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _at_call_count(schedule: optax.Schedule, steps: int) -> optax.Schedule:
  """``schedule`` of the update count -> of the call count before that update."""
  return lambda count: schedule(count * steps + (steps - 1))


def keras(
  learning_rate: optax.ScalarOrSchedule = 0.001,
  rho: float = 0.9,
  momentum: float = 0.0,
  epsilon: float = 1e-7,
  centered: bool = False,
  weight_decay: float | None = None,
  clipnorm: float | None = None,
  clipvalue: float | None = None,
  global_clipnorm: float | None = None,
  use_ema: bool = False,
  ema_momentum: float = 0.99,
  ema_overwrite_frequency: int | None = None,
  loss_scale_factor: float | None = None,
  gradient_accumulation_steps: int | None = None,
  **state_storage: Any,
) -> GradientTransformationExtraArgs:
  """Keras 3 ``keras.optimizers.RMSprop``.

  Per step (``[- mu**2]`` only when centered)::

      nu = rho * nu + (1 - rho) * g**2
      u  = lr * g / sqrt(nu [- mu**2] + epsilon)
      b  = momentum * b + u
      p  = p - lr * weight_decay * p - b

  eps inside the square root, ``nu`` starts at 0, the learning rate enters the
  momentum buffer, weight decay is decoupled (``theta -= lr * wd * theta``
  before the step). Gradients are clipped first: ``clipnorm`` per variable,
  ``global_clipnorm`` over all, ``clipvalue`` elementwise (Keras allows only
  one of them).

  Keras' optimizer-level options, in the order Keras applies them:

  - ``loss_scale_factor``: Keras' ``fit`` multiplies the loss by it
    (``optimizer.scale_loss``) and ``apply`` divides the gradients by it. This
    transformation divides the gradients it is given, as ``apply`` does: so
    differentiate ``loss * loss_scale_factor``, as Keras' ``train_step`` does
    (the point is to keep small float16 gradients from underflowing), or the
    gradients are shrunk by the factor.
  - ``gradient_accumulation_steps=k`` (None, or an int in ``[2, 2**31 - 1]``;
    Keras asks for >= 2): the gradients of ``k`` consecutive calls are summed
    and the update, on every ``k``-th call, takes their sum divided by ``k``
    (clipped, then weight decay and the RMSprop step, all on that call); the
    other calls return zero updates and leave the statistics as they are. This is
    ``optax.MultiSteps(..., use_grad_mean=False)`` with the division by ``k``
    inside (MultiSteps' default running mean rounds differently from Keras'
    sum / k). As in Keras, a learning-rate schedule is evaluated at the
    number of *calls* before the update (``k - 1``, ``2k - 1``, ...), not at
    the number of updates.
  - ``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency``: a moving
    average of the parameters, updated on every call (also between
    accumulated updates, as Keras does) and, every
    ``ema_overwrite_frequency`` steps, written into the parameters; see
    :func:`optax_rms.ema_params`, whose state this returns. Read the average
    with :func:`optax_rms.get_ema_params` (Keras' ``finalize_variable_values``,
    which ``fit`` calls at its end, writes it into the model). As in Keras,
    ``ema_momentum`` and ``ema_overwrite_frequency`` do nothing without
    ``use_ema`` (they are still checked).

  ``update`` needs ``params`` when ``use_ema=True``.

  ``**state_storage``: the state-storage keywords of ``optax_rms.rmsprop``
  (``nu_dtype``, ``mu_dtype``, ``momentum_dtype``, ``nu_quantization``,
  ``mu_quantization``, ``momentum_quantization``) pass through: the framework
  has no such option, and they change how the state is stored, not the
  update's math.

  Examples:
    >>> import optax_rms
    >>> tx = optax_rms.compat.keras(learning_rate=1e-3, momentum=0.9, clipnorm=1.0)
    >>> tx = optax_rms.compat.keras(
    ...   use_ema=True, ema_momentum=0.999, gradient_accumulation_steps=4
    ... )
  """
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  _validate.check_range("rho", rho, low=0.0, high=1.0, high_open=True)
  _validate.check_range("epsilon", epsilon, low=0.0, low_open=True)
  _validate.check_range("momentum", momentum, low=0.0, high=1.0, high_open=True)
  if weight_decay is not None:
    _validate.check_range("weight_decay", weight_decay, low=0.0)
  options = _keras_options(
    clipnorm=clipnorm,
    clipvalue=clipvalue,
    global_clipnorm=global_clipnorm,
    use_ema=use_ema,
    ema_momentum=ema_momentum,
    ema_overwrite_frequency=ema_overwrite_frequency,
    loss_scale_factor=loss_scale_factor,
    gradient_accumulation_steps=gradient_accumulation_steps,
  )
  if options.accumulation_steps is not None and callable(learning_rate):
    # Keras evaluates a schedule at its call count, `steps - 1` calls into
    # each accumulation window; the inner count here counts updates.
    learning_rate = _at_call_count(learning_rate, options.accumulation_steps)
  core = rmsprop(
    learning_rate,
    decay=rho,
    eps=epsilon,
    eps_in_sqrt=True,
    centered=centered,
    momentum=_momentum_or_none(momentum),
    lr_in_momentum=True,
    weight_decay=_weight_decay_or_none(weight_decay),
    weight_decay_mode="decoupled",
    **_state_storage("keras", state_storage),
  )
  return _with_keras_options(core, options)


class _KerasOptions(NamedTuple):
  """Keras' optimizer-level options, checked: what goes around the step.

  Attributes:
    clip: the gradient clipping (``clipnorm``, ``global_clipnorm`` or
      ``clipvalue``), or None.
    accumulation_steps: ``gradient_accumulation_steps`` (an int >= 2), or None.
    loss_scale_factor: the factor the gradients are divided by, or None.
    ema_decay: ``ema_momentum`` with ``use_ema=True``; None without.
    ema_overwrite_every: ``ema_overwrite_frequency`` (None: never).
  """

  clip: optax.GradientTransformation | None
  accumulation_steps: int | None
  loss_scale_factor: float | None
  ema_decay: float | None
  ema_overwrite_every: int | None


def _keras_clip(
  clipnorm: Any, clipvalue: Any, global_clipnorm: Any
) -> optax.GradientTransformation | None:
  """Keras' gradient clipping (at most one of the three), checked."""
  clips = {
    "clipnorm": clipnorm,
    "clipvalue": clipvalue,
    "global_clipnorm": global_clipnorm,
  }
  given = [name for name, value in clips.items() if value is not None]
  if len(given) > 1:
    raise ValueError(
      f"Only one of clipnorm, clipvalue and global_clipnorm can be set, as in "
      f"Keras; got {', '.join(given)}."
    )
  for name in given:
    _validate.check_range(name, clips[name], low=0.0, low_open=True)
  if clipnorm is not None:
    return _clip_each_by_norm(clipnorm)
  if global_clipnorm is not None:
    return optax.clip_by_global_norm(global_clipnorm)
  if clipvalue is not None:
    return optax.clip(clipvalue)
  return None


def _keras_options(
  *,
  clipnorm: Any,
  clipvalue: Any,
  global_clipnorm: Any,
  use_ema: Any,
  ema_momentum: Any,
  ema_overwrite_frequency: Any,
  loss_scale_factor: Any,
  gradient_accumulation_steps: Any,
) -> _KerasOptions:
  """Checks Keras' optimizer-level options (the EMA ones also without
  ``use_ema``, as Keras does) and resolves them."""
  name = "optax_rms.compat.keras"
  _validate.check_bool("use_ema", use_ema)
  _validate.check_range("ema_momentum", ema_momentum, low=0.0, high=1.0)
  if ema_overwrite_frequency is not None:
    ema_overwrite_frequency = _validate.check_int_in(
      "ema_overwrite_frequency", ema_overwrite_frequency, low=1, what=name
    )
  if loss_scale_factor is not None:
    _validate.check_range(
      "loss_scale_factor", loss_scale_factor, low=0.0, low_open=True
    )
  if gradient_accumulation_steps is not None:
    # Keras asks for >= 2; None is no accumulation.
    gradient_accumulation_steps = _validate.check_int_in(
      "gradient_accumulation_steps", gradient_accumulation_steps, low=2, what=name
    )
  return _KerasOptions(
    clip=_keras_clip(clipnorm, clipvalue, global_clipnorm),
    accumulation_steps=gradient_accumulation_steps,
    loss_scale_factor=loss_scale_factor,
    ema_decay=ema_momentum if use_ema else None,
    ema_overwrite_every=ema_overwrite_frequency,
  )


def _with_keras_options(
  core: optax.GradientTransformation, options: _KerasOptions
) -> optax.GradientTransformationExtraArgs:
  """``core`` (the RMSprop step) with Keras' options around it, in the order
  Keras applies them: loss scale, accumulation (its division by the steps
  first), clipping, the step; the moving average over all of it."""
  steps = options.accumulation_steps
  parts = [_divide(steps)] if steps is not None else []
  if options.clip is not None:
    parts.append(options.clip)
  tx: optax.GradientTransformation = optax.chain(*parts, core) if parts else core
  if steps is not None:
    # Keras sums the gradients and divides the sum by the steps at the update:
    # use_grad_mean=False sums in Keras' order, `_divide` (first in `tx`)
    # divides. MultiSteps' default running mean rounds differently.
    tx = optax.MultiSteps(
      tx, every_k_schedule=steps, use_grad_mean=False
    ).gradient_transformation()
  if options.loss_scale_factor is not None:
    tx = optax.chain(_divide(options.loss_scale_factor), tx)
  if options.ema_decay is not None:
    tx = ema_params(
      tx,
      decay=options.ema_decay,
      overwrite_every=options.ema_overwrite_every,
      accumulation_steps=steps or 1,
    )
  return optax.with_extra_args_support(tx)


def tf1(
  learning_rate: optax.ScalarOrSchedule,
  decay: float = 0.9,
  momentum: float = 0.0,
  epsilon: float = 1e-10,
  centered: bool = False,
  **state_storage: Any,
) -> GradientTransformationExtraArgs:
  """TensorFlow 1 ``tf.compat.v1.train.RMSPropOptimizer``.

  Per step (``[- mu**2]`` only when centered)::

      nu = 1 at the start;      nu = decay * nu + (1 - decay) * g**2
      b  = momentum * b + lr * g / sqrt(nu [- mu**2] + epsilon)
      p  = p - b

  The accumulator starts at 1 (not 0), eps is inside the square root and the
  learning rate enters the momentum buffer. This is the optimizer of the
  EfficientNet/MobileNet TPU recipes (with ``decay=0.9, momentum=0.9,
  epsilon=1e-3``) and of DQN/A3C reference code.

  ``**state_storage``: the state-storage keywords of ``optax_rms.rmsprop``
  (``nu_dtype``, ``mu_dtype``, ``momentum_dtype``, ``nu_quantization``,
  ``mu_quantization``, ``momentum_quantization``) pass through: the framework
  has no such option, and they change how the state is stored, not the
  update's math.

  Examples:
    >>> import optax_rms
    >>> tx = optax_rms.compat.tf1(0.016, decay=0.9, momentum=0.9, epsilon=1e-3)
  """
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  _validate.check_range("decay", decay, low=0.0, high=1.0, high_open=True)
  _validate.check_range("momentum", momentum, low=0.0, high=1.0, high_open=True)
  _validate.check_range("epsilon", epsilon, low=0.0, low_open=True)
  return rmsprop(
    learning_rate,
    decay=decay,
    eps=epsilon,
    initial_scale=1.0,
    eps_in_sqrt=True,
    centered=centered,
    momentum=_momentum_or_none(momentum),
    lr_in_momentum=True,
    **_state_storage("tf1", state_storage),
  )


def _clip_params_after_update(bound: float) -> optax.GradientTransformation:
  """MXNet ``clip_weights``: the updated parameters are clipped to +-bound."""

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
        "clip_weights needs the parameters: call update(grads, state, params)."
      )
    new = jax.tree.map(lambda p, u: jnp.clip(p + u, -bound, bound) - p, params, updates)
    return new, state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def mxnet(
  learning_rate: optax.ScalarOrSchedule = 0.001,
  gamma1: float = 0.9,
  gamma2: float = 0.9,
  epsilon: float = 1e-8,
  centered: bool = False,
  clip_weights: float | None = None,
  rescale_grad: float = 1.0,
  wd: float = 0.0,
  clip_gradient: float | None = None,
  **state_storage: Any,
) -> GradientTransformationExtraArgs:
  """MXNet 1.9 ``mx.optimizer.RMSProp``.

  Per step::

      g  = clip(rescale_grad * g + wd * p, ±clip_gradient)
      nu = gamma1 * nu + (1 - gamma1) * g**2
      p  = p - lr * g / sqrt(nu + epsilon)

  (Tieleman & Hinton). With ``centered=True`` it is Graves (2013) eq. 38-45,
  with ``gamma2`` the momentum::

      mu    = gamma1 * mu + (1 - gamma1) * g
      delta = gamma2 * delta - lr * g / sqrt(nu - mu**2 + epsilon)
      p     = p + delta

  ``gamma2`` is unused when not centered, as in MXNet. ``rescale_grad``
  multiplies the gradient, ``wd`` adds ``wd * p`` (coupled) and
  ``clip_gradient`` clips the result elementwise, in that order, before the
  statistics; ``clip_weights`` clips the parameters after the update (so
  ``update`` needs ``params``).

  The learning rate schedule is a function of the 0-based step; an MXNet
  ``lr_scheduler`` is called with the 1-based update count.

  ``**state_storage``: the state-storage keywords of ``optax_rms.rmsprop``
  (``nu_dtype``, ``mu_dtype``, ``momentum_dtype``, ``nu_quantization``,
  ``mu_quantization``, ``momentum_quantization``) pass through: the framework
  has no such option, and they change how the state is stored, not the
  update's math.

  Examples:
    >>> import optax_rms
    >>> tx = optax_rms.compat.mxnet(0.03, gamma1=0.9, epsilon=1e-6, rescale_grad=0.1)
  """
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  _validate.check_range("gamma1", gamma1, low=0.0, high=1.0, high_open=True)
  _validate.check_range("gamma2", gamma2, low=0.0, high=1.0, high_open=True)
  _validate.check_range("epsilon", epsilon, low=0.0, low_open=True)
  _validate.check_range("rescale_grad", rescale_grad, low=0.0, low_open=True)
  _validate.check_range("wd", wd, low=0.0)
  for name, value in (("clip_weights", clip_weights), ("clip_gradient", clip_gradient)):
    if value is not None:
      _validate.check_range(name, value, low=0.0, low_open=True)
  parts: list[optax.GradientTransformation] = []
  if rescale_grad != 1.0:
    parts.append(optax.scale(rescale_grad))
  if _weight_decay_or_none(wd) is not None:
    parts.append(optax.add_decayed_weights(wd))
  if clip_gradient is not None:
    parts.append(optax.clip(clip_gradient))
  parts.append(
    rmsprop(
      learning_rate,
      decay=gamma1,
      eps=epsilon,
      eps_in_sqrt=True,
      centered=centered,
      momentum=gamma2 if centered else None,
      lr_in_momentum=True,
      **_state_storage("mxnet", state_storage),
    )
  )
  if clip_weights is not None:
    parts.append(_clip_params_after_update(clip_weights))
  return parts[0] if len(parts) == 1 else optax.chain(*parts)  # type: ignore[return-value]


def timm(
  lr: optax.ScalarOrSchedule = 0.01,
  alpha: float = 0.9,
  eps: float = 1e-10,
  weight_decay: float = 0,
  momentum: float = 0.0,
  centered: bool = False,
  decoupled_decay: bool = False,
  lr_in_momentum: bool = True,
  **state_storage: Any,
) -> GradientTransformationExtraArgs:
  """timm's ``RMSpropTF`` (TensorFlow-style RMSprop in PyTorch).

  Per step (``[- mu**2]`` only when centered)::

      nu = 1 at the start;      g = g + weight_decay * p     (coupled)
      nu = alpha * nu + (1 - alpha) * g**2
      u  = g / sqrt(nu [- mu**2] + eps)

  then, with momentum, ``b = momentum * b + lr * u; p = p - b``
  (``lr_in_momentum=True``) or ``b = momentum * b + u; p = p - lr * b``; with
  ``decoupled_decay`` the parameters are first scaled by
  ``1 - lr * weight_decay``.

  ``**state_storage``: the state-storage keywords of ``optax_rms.rmsprop``
  (``nu_dtype``, ``mu_dtype``, ``momentum_dtype``, ``nu_quantization``,
  ``mu_quantization``, ``momentum_quantization``) pass through: the framework
  has no such option, and they change how the state is stored, not the
  update's math.

  Examples:
    >>> import optax_rms
    >>> tx = optax_rms.compat.timm(lr=0.016, alpha=0.9, eps=1e-3, momentum=0.9)
  """
  _validate.check_scalar_or_schedule("lr", lr)
  _validate.check_range("alpha", alpha, low=0.0, high=1.0, high_open=True)
  _validate.check_range("momentum", momentum, low=0.0, high=1.0, high_open=True)
  _validate.check_range("weight_decay", weight_decay, low=0.0)
  _validate.check_bool("decoupled_decay", decoupled_decay)
  return rmsprop(
    lr,
    decay=alpha,
    eps=eps,
    initial_scale=1.0,
    eps_in_sqrt=True,
    centered=centered,
    momentum=_momentum_or_none(momentum),
    lr_in_momentum=lr_in_momentum,
    weight_decay=_weight_decay_or_none(weight_decay),
    weight_decay_mode="decoupled" if decoupled_decay else "coupled",
    **_state_storage("timm", state_storage),
  )
