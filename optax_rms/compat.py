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
:class:`optax_rms.RMSPropState`); otherwise an ``optax.chain``.

The differences between the frameworks are tabulated in ``docs/porting.md``.
"""


from typing import Any

import jax
import jax.numpy as jnp
import optax

from optax_rms import _checks
from optax_rms._rmsprop import rmsprop

__all__ = ["keras", "mxnet", "pytorch", "tf1", "timm"]


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
) -> optax.GradientTransformationExtraArgs:
  r"""``torch.optim.RMSprop``.

  .. math::
    g \leftarrow \pm g + \lambda\theta;\quad
    \nu \leftarrow \alpha\nu + (1-\alpha)g^2;\quad
    u = g / (\sqrt{\nu\,[-\,\mu^2]} + \epsilon);\quad
    b \leftarrow \beta b + u;\quad \theta \leftarrow \theta - \eta_t b

  eps outside the square root, ``nu`` starts at 0, weight decay is coupled
  (L2, enters the statistics), and the learning rate multiplies the momentum
  buffer *after* it is updated, so a schedule rescales the whole buffer.
  ``momentum=0`` keeps no buffer. Where PyTorch's centered variance rounds
  negative it returns NaN; optax_rms clamps it at 0.

  Complex parameters: PyTorch views them as pairs of reals (one ``nu`` per real
  and imaginary part); optax_rms uses ``|g|^2`` as optax does, so complex
  trajectories differ.

  Examples:
    >>> import optax_rms
    >>> tx = optax_rms.compat.pytorch(lr=1e-2, momentum=0.9, weight_decay=1e-4)
  """
  _checks.check_scalar_or_schedule("lr", lr)
  _checks.check_range("alpha", alpha, low=0.0, high=1.0, high_open=True)
  _checks.check_range("momentum", momentum, low=0.0, high=1.0, high_open=True)
  _checks.check_range("weight_decay", weight_decay, low=0.0)
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
) -> optax.GradientTransformationExtraArgs:
  r"""Keras 3 ``keras.optimizers.RMSprop``.

  .. math::
    \nu \leftarrow \rho\nu + (1-\rho)g^2;\quad
    u = \eta_t g / \sqrt{\nu\,[-\,\mu^2] + \epsilon};\quad
    b \leftarrow \beta b + u;\quad
    \theta \leftarrow \theta - \eta_t\lambda\theta - b

  eps inside the square root, ``nu`` starts at 0, the learning rate enters the
  momentum buffer, weight decay is decoupled (``theta -= lr * wd * theta``
  before the step). Gradients are clipped first: ``clipnorm`` per variable,
  ``global_clipnorm`` over all, ``clipvalue`` elementwise (Keras allows only
  one of them).

  Examples:
    >>> import optax_rms
    >>> tx = optax_rms.compat.keras(learning_rate=1e-3, momentum=0.9, clipnorm=1.0)
  """
  _checks.check_scalar_or_schedule("learning_rate", learning_rate)
  _checks.check_range("rho", rho, low=0.0, high=1.0, high_open=True)
  _checks.check_range("epsilon", epsilon, low=0.0, low_open=True)
  _checks.check_range("momentum", momentum, low=0.0, high=1.0, high_open=True)
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
    _checks.check_range(name, clips[name], low=0.0, low_open=True)
  if weight_decay is not None:
    _checks.check_range("weight_decay", weight_decay, low=0.0)
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
  )
  if clipnorm is not None:
    return optax.chain(_clip_each_by_norm(clipnorm), core)
  if global_clipnorm is not None:
    return optax.chain(optax.clip_by_global_norm(global_clipnorm), core)
  if clipvalue is not None:
    return optax.chain(optax.clip(clipvalue), core)
  return core


def tf1(
  learning_rate: optax.ScalarOrSchedule,
  decay: float = 0.9,
  momentum: float = 0.0,
  epsilon: float = 1e-10,
  centered: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""TensorFlow 1 ``tf.compat.v1.train.RMSPropOptimizer``.

  .. math::
    \nu_0 = 1;\quad \nu \leftarrow \rho\nu + (1-\rho)g^2;\quad
    b \leftarrow \beta b + \eta_t g / \sqrt{\nu\,[-\,\mu^2] + \epsilon};\quad
    \theta \leftarrow \theta - b

  The accumulator starts at 1 (not 0), eps is inside the square root and the
  learning rate enters the momentum buffer. This is the optimizer of the
  EfficientNet/MobileNet TPU recipes (with ``decay=0.9, momentum=0.9,
  epsilon=1e-3``) and of DQN/A3C reference code.

  Examples:
    >>> import optax_rms
    >>> tx = optax_rms.compat.tf1(0.016, decay=0.9, momentum=0.9, epsilon=1e-3)
  """
  _checks.check_scalar_or_schedule("learning_rate", learning_rate)
  _checks.check_range("decay", decay, low=0.0, high=1.0, high_open=True)
  _checks.check_range("momentum", momentum, low=0.0, high=1.0, high_open=True)
  _checks.check_range("epsilon", epsilon, low=0.0, low_open=True)
  return rmsprop(
    learning_rate,
    decay=decay,
    eps=epsilon,
    initial_scale=1.0,
    eps_in_sqrt=True,
    centered=centered,
    momentum=_momentum_or_none(momentum),
    lr_in_momentum=True,
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
) -> optax.GradientTransformationExtraArgs:
  r"""MXNet 1.9 ``mx.optimizer.RMSProp``.

  .. math::
    g \leftarrow \mathrm{clip}(r\,g + \lambda\theta, \pm c);\quad
    \nu \leftarrow \gamma_1\nu + (1-\gamma_1)g^2;\quad
    \theta \leftarrow \theta - \eta_t\, g / \sqrt{\nu + \epsilon}

  (Tieleman & Hinton). With ``centered=True`` it is Graves (2013) eq. 38-45,
  with ``gamma2`` the momentum: :math:`\mu \leftarrow \gamma_1\mu +
  (1-\gamma_1)g`, :math:`\delta \leftarrow \gamma_2\delta - \eta_t g /
  \sqrt{\nu - \mu^2 + \epsilon}`, :math:`\theta \leftarrow \theta + \delta`.
  ``gamma2`` is unused when not centered, as in MXNet. ``rescale_grad``
  multiplies the gradient, ``wd`` adds :math:`\lambda\theta` (coupled) and
  ``clip_gradient`` clips the result elementwise, in that order, before the
  statistics; ``clip_weights`` clips the parameters after the update (so
  ``update`` needs ``params``).

  The learning rate schedule is a function of the 0-based step; an MXNet
  ``lr_scheduler`` is called with the 1-based update count.

  Examples:
    >>> import optax_rms
    >>> tx = optax_rms.compat.mxnet(0.03, gamma1=0.9, epsilon=1e-6, rescale_grad=0.1)
  """
  _checks.check_scalar_or_schedule("learning_rate", learning_rate)
  _checks.check_range("gamma1", gamma1, low=0.0, high=1.0, high_open=True)
  _checks.check_range("gamma2", gamma2, low=0.0, high=1.0, high_open=True)
  _checks.check_range("epsilon", epsilon, low=0.0, low_open=True)
  _checks.check_range("rescale_grad", rescale_grad, low=0.0, low_open=True)
  _checks.check_range("wd", wd, low=0.0)
  for name, value in (("clip_weights", clip_weights), ("clip_gradient", clip_gradient)):
    if value is not None:
      _checks.check_range(name, value, low=0.0, low_open=True)
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
) -> optax.GradientTransformationExtraArgs:
  r"""timm's ``RMSpropTF`` (TensorFlow-style RMSprop in PyTorch).

  .. math::
    \nu_0 = 1;\quad g \leftarrow g + \lambda\theta \text{ (coupled)};\quad
    \nu \leftarrow \alpha\nu + (1-\alpha)g^2;\quad
    u = g / \sqrt{\nu\,[-\,\mu^2] + \epsilon}

  then, with momentum, :math:`b \leftarrow \beta b + \eta_t u;\ \theta
  \leftarrow \theta - b` (``lr_in_momentum=True``) or :math:`b \leftarrow
  \beta b + u;\ \theta \leftarrow \theta - \eta_t b`; with
  ``decoupled_decay`` the parameters are first scaled by
  :math:`1 - \eta_t\lambda`.

  Examples:
    >>> import optax_rms
    >>> tx = optax_rms.compat.timm(lr=0.016, alpha=0.9, eps=1e-3, momentum=0.9)
  """
  _checks.check_scalar_or_schedule("lr", lr)
  _checks.check_range("alpha", alpha, low=0.0, high=1.0, high_open=True)
  _checks.check_range("momentum", momentum, low=0.0, high=1.0, high_open=True)
  _checks.check_range("weight_decay", weight_decay, low=0.0)
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
  )
