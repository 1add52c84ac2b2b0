r"""RMSprop as one Optax gradient transformation.

This module is the one place where the update math lives: the second moment,
the centered mean, where eps sits, bias correction, momentum with the learning
rate inside or after the buffer, weight decay and maximize. Everything else in
the package (the framework presets included) only maps arguments onto
:func:`rmsprop`.

Read from the top: the equations of the docstring, one function per group
(``_second_moment``, ``_centered_variance``, ``_normalized``, ...); one
leaf's step (``_leaf_math``, which calls them in the docstring's order);
the tree (``_apply``, jitted once per configuration and call signature);
``init`` and ``update``. What the optimizer was built with is one frozen
``_config.Config``; how each buffer is stored is a codec
(``_quantize``); a big leaf's chunk loop is ``_chunks``.
"""

import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import optax

from optax_rms import (
  _checks,
  _chunks,
  _config,
  _group,
  _jit_cache,
  _quantize,
  _validate,
)
from optax_rms._types import (
  Array,
  ArrayLike,
  DTypeLike,
  GradientTransformation,
  GradientTransformationExtraArgs,
  MaskOrFn,
  ScalarOrSchedule,
  Updates,
)

WeightDecayMode: TypeAlias = Literal["coupled", "decoupled"]


class RMSPropState(NamedTuple):
  """State of :func:`rmsprop` and :func:`scale_by_rms`.

  One flat record, whatever the variant. Fields of variants that are switched
  off are ``None`` (an empty pytree), so a plain RMSprop state holds exactly one
  array per parameter plus the step counter.

  Attributes:
    count: steps taken so far, an int32 scalar (it saturates instead of
      overflowing). Schedules are evaluated at ``count`` (0-based); bias
      correction uses ``count + 1``.
    nu: EMA of the squared gradient magnitudes ``|g|^2``, one array per
      parameter (real even for complex parameters). With ``centered=True``
      and ``nu`` or ``mu`` quantized to 8 bits it holds the centered
      variance ``nu - |mu|^2`` instead (with ``bias_correction``,
      ``b * (nu_hat - |mu_hat|^2)``, ``b = 1 - decay**t``; see ``rmsprop``).
    mu: EMA of the gradients (``centered=True``), else ``None``.
    momentum: the momentum buffer (``momentum`` not ``None``), else ``None``.
    nu_scale: with ``nu_quantization="8bit"``, one float32 maximum per block
      of 256 elements of each ``nu`` (which then holds uint8 codes), else
      ``None``.
    mu_scale: with ``mu_quantization="8bit"``, one float32 absolute maximum
      per block of each ``mu`` (then uint8 sign-and-magnitude codes), else
      ``None``.
    momentum_scale: the same for ``momentum`` with
      ``momentum_quantization="8bit"``, else ``None``.
  """

  count: Array  # type: ignore[assignment]  # shadows tuple.count
  nu: Updates
  mu: Updates | None = None
  momentum: Updates | None = None
  nu_scale: Updates | None = None
  mu_scale: Updates | None = None
  momentum_scale: Updates | None = None


# ---------------------------------------------------------------------------
# The update, equation by equation (see the rmsprop docstring). Each function
# is elementwise: it runs on a whole leaf or on a chunk of one.


def _abs_sq(x: jax.Array) -> jax.Array:
  """|x|^2, real for complex x; the same HLO as optax for real x."""
  if jnp.iscomplexobj(x):
    return (x.conj() * x).real
  return jnp.square(x)


def _gradient(g: jax.Array, p: Any, wd: Any, *, maximize: bool, coupled: bool):
  """g = -g (maximize); g = g + wd * p (coupled weight decay: L2, entering
  the statistics, as PyTorch's weight_decay)."""
  if maximize:
    g = -g
  if coupled:
    g = g + wd * p
  return g


def _second_moment(nu: jax.Array, g: jax.Array, decay: Any) -> jax.Array:
  """nu = decay * nu + (1 - decay) * |g|^2, in optax's order of operations."""
  return (1 - decay) * _abs_sq(g) + decay * nu


def _first_moment(mu: jax.Array, g: jax.Array, decay: Any) -> jax.Array:
  """mu = decay * mu + (1 - decay) * g, in optax's order of operations."""
  return (1 - decay) * g + decay * mu


def _debiased(x: jax.Array, b: Any) -> jax.Array:
  """x_hat = x / b, b = 1 - decay^(t+1) (bias_correction; None: x)."""
  return x if b is None else x / b.astype(x.dtype)


def _centered_variance(nu_hat: jax.Array, mu_hat: jax.Array) -> jax.Array:
  """v = max(nu_hat - |mu_hat|^2, 0): >= 0 in exact arithmetic; the clamp
  catches the rounding error that would give sqrt(negative) = NaN."""
  return jnp.maximum(nu_hat - _abs_sq(mu_hat), 0)


def _variance_recurrence(
  s: jax.Array, mu: jax.Array, g: jax.Array, decay: Any, b: Any, b_prev: Any
) -> jax.Array:
  """The centered variance's own recurrence, for state that stores it.

  Without bias correction s = nu - |mu|^2 and, exactly,
  s = decay * (s + (1 - decay) * |g - mu|^2). With it s = b * (nu_hat -
  |mu_hat|^2) (b = 1 - decay^t, b' the previous step's, 0 at the first):
  s = decay * (s + (1 - decay) * (b'/b) * |g - mu/b'|^2). Both add only
  non-negative terms: no difference of two large numbers.
  """
  if b is None:
    return decay * (s + (1 - decay) * _abs_sq(g - mu))
  b, b_prev = b.astype(s.dtype), b_prev.astype(s.dtype)
  mean = mu / jnp.where(b_prev > 0, b_prev, 1)
  return decay * (s + (1 - decay) * (_abs_sq(g - mean) * (b_prev / b)))


def _normalized(g: jax.Array, v: jax.Array, eps: Any, eps_in_sqrt: bool):
  """u = g / sqrt(v + eps) (eps_in_sqrt), else g / (sqrt(v) + eps)."""
  if eps_in_sqrt:
    return jax.lax.rsqrt(v + eps) * g
  return 1 / (jnp.sqrt(v) + eps) * g


def _momentum_step(u: jax.Array, buf: jax.Array, neg_lr: Any, momentum: Any, c):
  """The step from u and the new buffer b (`c`: the Config).

  lr_in_momentum (optax, Keras, TF1; u is -lr * u here): s = b, Nesterov
  s = -lr * u + momentum * b. PyTorch: s = -lr * b, Nesterov
  s = -lr * (u + momentum * b).
  """
  s = u + momentum * buf if c.nesterov else buf
  return s if c.lr_in_momentum else neg_lr * s


# ---------------------------------------------------------------------------
# One leaf: the equations in order, each buffer stored as it is computed.


class Hyper(NamedTuple):
  """The hyperparameters' values at this step (arrays or Python numbers)."""

  count: jax.Array  # type: ignore[assignment]  # t + 1; shadows tuple.count
  lr: Any
  wd: Any
  decay: Any
  eps: Any
  momentum: Any
  debias: Any  # b = 1 - decay^(t+1), or None (no bias correction)
  debias_prev: Any  # 1 - decay^t, for state that stores the variance


def _leaf_math(
  c: _config.Config, h: Hyper, decays: bool, x: dict[str, jax.Array], store: Any
) -> jax.Array:
  """One leaf's step from its inputs `x` (the gradient "g", the parameter
  "p", each buffer decoded); `store(name, value)` stores a buffer and
  returns it as stored, which is what the rest of the step reads."""
  g, p = x["g"], x.get("p")
  out_dtype = g.dtype
  g, nu, mu, buf = _widened(g, x.get("nu"), x.get("mu"), x.get("momentum"))
  coupled = decays and c.weight_decay_mode == "coupled"
  g = _gradient(g, p, h.wd, maximize=c.maximize, coupled=coupled)
  if c.variance_in_nu:
    s = store("nu", _variance_recurrence(nu, mu, g, h.decay, h.debias, h.debias_prev))
    store("mu", _first_moment(mu, g, h.decay))
    v = jnp.maximum(_debiased(s, h.debias), 0)
  else:
    v = _debiased(store("nu", _second_moment(nu, g, h.decay)), h.debias)
    if c.centered:
      mu_hat = _debiased(store("mu", _first_moment(mu, g, h.decay)), h.debias)
      v = _centered_variance(v, mu_hat)
  u = _normalized(g, v, h.eps, c.eps_in_sqrt)
  if not c.has_learning_rate:  # scale_by_rms: no lr, no sign flip
    return u.astype(out_dtype)
  neg_lr = jnp.asarray(-h.lr).astype(u.dtype)  # as optax: lr in u's dtype
  if not c.has_momentum:
    s = neg_lr * u
  else:
    if c.lr_in_momentum:  # b = momentum * b - lr * u
      u = neg_lr * u
    buf = store("momentum", u + h.momentum * buf)  # PyTorch: b = m * b + u
    s = _momentum_step(u, buf, neg_lr, h.momentum, c)
  if decays and c.weight_decay_mode == "decoupled":
    s = s + (neg_lr * h.wd) * p  # AdamW-style: -lr * wd * p
  return s.astype(out_dtype)


def _widened(g: jax.Array, *buffers: Any) -> list[Any]:
  """g and the buffers in the widest real dtype among them (None stays).

  Casting the buffers up too (not only g) matters: `decay * nu` with a
  bfloat16 nu would round decay itself to bfloat16 (0.99 -> 0.98828), and
  the EMA's weights would no longer sum to 1 (nu settles ~15% low at decay
  0.99). With every dtype equal (optax's case) nothing is cast.
  """
  present = [x for x in (g, *buffers) if x is not None]
  wide = functools.reduce(
    jnp.promote_types, [jnp.finfo(x.dtype).dtype for x in present]
  )
  return [
    None if x is None else x.astype(jnp.promote_types(x.dtype, wide))
    for x in (g, *buffers)
  ]


class Buffers(NamedTuple):
  """One leaf's state buffers as stored (RMSPropState's fields but count)."""

  nu: Any
  mu: Any = None
  momentum: Any = None
  nu_scale: Any = None
  mu_scale: Any = None
  momentum_scale: Any = None


def _leaf_update(
  c: _config.Config,
  h: Hyper,
  g: jax.Array,
  p: Any,
  state: Buffers,
  segments: _quantize.Segments,
  decays: bool,
) -> tuple[jax.Array, Buffers]:
  """One leaf's step and new buffers; `decays`: its weight-decay flag."""
  elements = {"g": g} if p is None else {"g": g, "p": p}
  elements |= {k: getattr(state, k) for k in c.buffers}
  blocks = {k: getattr(state, f"{k}_scale") for k in c.buffers}
  storage = _quantize.Storage(
    codecs={k: c.codec(k) for k in c.buffers},
    dtypes={k: elements[k].dtype for k in c.buffers},
    count=h.count,
  )
  step, stored, scales = _chunks.map_leaf(
    functools.partial(_leaf_math, c, h, decays),
    elements,
    {k: v for k, v in blocks.items() if v is not None},
    segments,
    storage,
  )
  scales = {f"{k}_scale": v for k, v in scales.items()}
  return step, Buffers(**stored, **scales)


def _kind(c: _config.Config, g: Any, p: Any, state: Buffers, segs: Any, decays: bool):
  """What leaves updated together share (see _group); None: updated alone.

  Alone: a leaf of a configuration with a float buffer (the group would copy
  it whole: 4 bytes per element more at the peak, where alone it is updated
  in place; and it compiles to short kernels anyway), a pack_small vector
  (grouped already), and an array laid out over a mesh's explicit axes,
  which concatenation would move.
  """
  arrays = [x for x in (g, p, *state) if x is not None]
  all_8bit = all(c.form(k) != "float" for k in c.buffers)
  if not all_8bit or len(segs) != 1 or not all(map(_group.unsharded, arrays)):
    return None
  dtypes = tuple(jnp.result_type(x) for x in (g, *state) if x is not None)
  return (dtypes, None if p is None else jnp.result_type(p), decays)


def _group_update(
  c: _config.Config, h: Hyper, group: _group.Group, members: list[tuple]
) -> list[tuple[jax.Array, Buffers]]:
  """The steps and new buffers of a group's leaves, updated as one."""
  gs, ps, states, segs, decays = zip(*members, strict=True)
  fields = {}
  for name in Buffers._fields:
    parts = [getattr(s, name) for s in states]
    if parts[0] is not None:
      scale = name.endswith("_scale")
      fields[name] = (
        _group.concat_blocks(parts) if scale else _group.concat(parts, group)
      )
  g = _group.concat(gs, group)
  p = None if ps[0] is None else _group.concat(ps, group)
  segments = _group.segments(group, segs)

  def update(inputs: tuple[jax.Array, Buffers], zero: jax.Array):
    at = h._replace(count=h.count + zero)  # the rounding's bits stay in the loop
    return _leaf_update(c, at, inputs[0], p, inputs[1], segments, decays[0])

  (step, new), starts = _group.once(update, h.count, group, (g, Buffers(**fields)))
  shapes = [jnp.shape(x) for x in gs]
  split = {
    name: (_group.split_blocks if name.endswith("_scale") else _group.split)(
      v, shapes, starts
    )
    for name, v in new._asdict().items()
    if v is not None
  }
  return [
    (s, Buffers(**{name: parts[i] for name, parts in split.items()}))
    for i, s in enumerate(_group.split(step, shapes, starts))
  ]


# ---------------------------------------------------------------------------
# The whole tree, jitted once per configuration.


class StepKey(NamedTuple):
  """What one compiled step is for: the configuration and this call's
  per-leaf facts (weight-decay flags, 8-bit blocks' segments)."""

  config: _config.Config
  decays: tuple[bool, ...]  # one weight-decay flag per leaf
  segments: tuple[Any, ...]  # per leaf (_quantize.leaf_segments); () if no 8-bit
  # The parameters' dtypes, per leaf, when update got parameters of the
  # gradients' structure (the buffers' dtypes follow them), else None.
  param_dtypes: tuple[Any, ...] | None = None


def _hyperparameters(c: _config.Config, values: dict[str, Any], count: Any) -> Hyper:
  """This step's hyperparameters: schedules evaluated at `count`."""
  decay = values["decay"]
  lr = values.get("learning_rate")
  if c.learning_rate_schedule is not None:
    lr = c.learning_rate_schedule(count)
  wd = values.get("weight_decay")
  if c.weight_decay_schedule is not None:
    wd = c.weight_decay_schedule(count)
  if c.check_hyperparams:
    checked = {
      "learning_rate": lr if c.has_learning_rate else None,
      "weight_decay": wd if c.weight_decay_mode is not None else None,
      "decay": decay,
      "eps": values["eps"],
      "momentum": values["momentum"] if c.has_momentum else None,
    }
    _checks.checkify_hyperparams(count, checked, constants=dict(c.constants))
  count_inc = optax.safe_increment(count)
  # As optax.tree.bias_correction: computed in float32 (decay**count can
  # round to 1 in low precision), divided in the moment's own dtype.
  debias = debias_prev = None
  if c.bias_correction:
    debias = 1 - decay**count_inc
    debias_prev = 1 - decay**count if c.variance_in_nu else None
  return Hyper(
    count_inc, lr, wd, decay, values["eps"], values["momentum"], debias, debias_prev
  )


def _check_traced(
  c: _config.Config, updates: Any, state: RMSPropState, param_dtypes: Any
) -> None:
  """Trees, shapes and dtypes are static: checked while tracing, so an
  eager call pays for them once per signature (a mismatch is a new one)."""
  _checks.check_state_matches(c.name, updates, state)
  _checks.check_count(c.name, state.count)
  _checks.check_gradients_inexact(c.name, updates)
  _checks.check_state_dtypes(
    c.name,
    state,
    # The buffers' dtypes follow the parameters' (when update got them, as
    # init did), else the gradients'.
    updates if param_dtypes is None else list(param_dtypes),
    c.state_dtype,
    Buffers._fields,
  )


def _apply(
  updates: optax.Updates,
  state: RMSPropState,
  params: optax.Params | None,
  arrays: dict[str, Any],
  key: StepKey,
) -> tuple[list[Any], RMSPropState]:
  """One RMSprop step over a whole tree.

  Run jitted, through :func:`_step_function` (one compiled step per key, kept
  in a bounded cache), so that an eager call is one dispatch instead of ~15
  per leaf and eager and jitted calls compile the same program.
  Hyperparameters that are Python numbers (``Config.constants``) are
  compile-time constants here, as they are when a caller jits a step that
  calls update: both calls then compile the same program, and eager and
  jitted results agree bit for bit (as arguments, XLA may contract a
  multiply-add into an FMA in one program and not in the other). Arrays
  (inject_hyperparams) stay arguments, so optimizers rebuilt every step with
  new arrays reuse the compiled step.
  """
  c = key.config
  _check_traced(c, updates, state, key.param_dtypes)
  h = _hyperparameters(c, {**arrays, **dict(c.constants)}, state.count)
  treedef: Any = jax.tree.structure(updates)  # stubs lack flatten_up_to

  def leaves_of(tree: Any) -> list[Any]:
    return [None] * treedef.num_leaves if tree is None else treedef.flatten_up_to(tree)

  per_leaf = zip(*(leaves_of(getattr(state, f)) for f in Buffers._fields), strict=True)
  segments = key.segments or ((),) * treedef.num_leaves
  leaves = [
    (g, p, Buffers(*buffers), segs, decays)
    for g, p, buffers, segs, decays in zip(
      leaves_of(updates), leaves_of(params), per_leaf, segments, key.decays, strict=True
    )
  ]
  outs: list[Any] = [None] * len(leaves)
  kinds = [_kind(c, *leaf) for leaf in leaves]
  groups = _group.plan(kinds, [jnp.size(g) for g, *_ in leaves])
  grouped = {i for group in groups for i in group.leaves}
  for i, leaf in enumerate(leaves):
    if i not in grouped:
      outs[i] = _leaf_update(c, h, *leaf)
  for group in groups:
    members = [leaves[i] for i in group.leaves]
    for i, out in zip(group.leaves, _group_update(c, h, group, members), strict=True):
      outs[i] = out
  fields = {
    f: treedef.unflatten([getattr(b, f) for _, b in outs])
    for f in Buffers._fields
    if outs and getattr(outs[0][1], f) is not None
  }
  if not outs:  # an empty tree: every buffer an empty tree
    fields = {f: treedef.unflatten([]) for f in _state_fields(c)}
  return [s for s, _ in outs], RMSPropState(count=h.count, **fields)


def _state_fields(c: _config.Config) -> list[str]:
  """The RMSPropState fields (but count) this configuration fills."""
  eight_bit = [f"{k}_scale" for k in c.buffers if c.form(k) != "float"]
  return list(c.buffers) + eight_bit


def _step_function(key: StepKey) -> Callable[..., Any]:
  """The jitted step of `key`, from the bounded cache (_jit_cache)."""
  return _jit_cache.jitted(_apply, key)


def _cache_size() -> int:
  """How many compiled-step configurations the cache holds (for tests)."""
  return _jit_cache.size()


# ---------------------------------------------------------------------------
# init and update.


def _check_eps(c: _config.Config, params: optax.Params, eps: Any) -> None:
  """eps must be a normal number in each leaf's compute dtype (see _widened)."""
  for param_dtype in {jnp.dtype(leaf.dtype) for leaf in jax.tree.leaves(params)}:
    compute = functools.reduce(
      jnp.promote_types,
      [_config.math_dtype(param_dtype)]
      + [_config.math_dtype(c.state_dtype(param_dtype, f)) for f in c.buffers],
    )
    _validate.check_eps_normal(
      c.name, eps, compute, where=f"the update of a {param_dtype} parameter runs in"
    )


def _init(c: _config.Config, eps: Any, params: optax.Params) -> RMSPropState:
  # Python numbers as leaves are accepted, as optax does ({'w': 3.0}).
  params = _checks.python_scalars_as_arrays(params)
  _checks.check_params_inexact(c.name, params)
  _check_eps(c, params, eps)
  if any(c.form(k) == "signed8" for k in c.buffers):
    _checks.check_params_real(c.name, params, "mu_quantization / momentum_quantization")
  leaves, treedef = jax.tree.flatten(params)
  segments = _quantize.leaf_segments(params) if c.eight_bit else [()] * len(leaves)
  fields = {}
  for name in c.buffers:
    value = c.initial_scale if name == "nu" else 0
    pairs = [
      c.codec(name).init(p, value, c.state_dtype(p.dtype, name), segs)
      for p, segs in zip(leaves, segments, strict=True)
    ]
    fields[name] = jax.tree.unflatten(treedef, [stored for stored, _ in pairs])
    if c.form(name) != "float":
      scales = [scale for _, scale in pairs]
      fields[f"{name}_scale"] = jax.tree.unflatten(treedef, scales)
  return RMSPropState(count=jnp.zeros([], jnp.int32), **fields)


_CHECKIFY_NEEDED = (
  "{name}(check_hyperparams=True) puts jax.experimental.checkify checks into "
  "the step; they only run under checkify.checkify, not eagerly nor under a "
  "plain jax.jit. Run the update (or the train step that calls it) as "
  "err, out = checkify.checkify(step)(...) and call err.throw(); or build "
  "the optimizer with check_hyperparams=False."
)


def _update(
  c: _config.Config,
  arrays: dict[str, Any],
  updates: optax.Updates,
  state: RMSPropState,
  params: optax.Params | None,
) -> tuple[optax.Updates, RMSPropState]:
  _checks.check_state_type(c.name, state, RMSPropState)
  _checks.check_state(
    c.name,
    state,
    centered=c.centered,
    has_momentum=c.has_momentum,
    forms=dict(zip(_config.BUFFERS, c.forms, strict=True)),
  )
  treedef: Any = jax.tree.structure(updates)  # stubs lack num_leaves
  decays = (False,) * treedef.num_leaves
  param_dtypes = None
  if params is not None and jax.tree.structure(params) == treedef:
    param_dtypes = tuple(jnp.result_type(p) for p in jax.tree.leaves(params))
  if c.weight_decay_mode is None:
    params = None
  else:
    if params is None:
      raise ValueError(
        f"{c.name}: weight_decay needs the parameters; call "
        "update(grads, state, params)."
      )
    _checks.check_params_match(c.name, updates, params)
    mask = _checks.resolve_mask(c.weight_decay_mask, params)
    decays = tuple(mask) if mask is not None else (True,) * treedef.num_leaves
  segments = tuple(_quantize.leaf_segments(updates)) if c.eight_bit else ()
  key = StepKey(c, decays, segments, param_dtypes)
  try:
    steps, new_state = _step_function(key)(updates, state, params, arrays)
  except ValueError as e:
    if c.check_hyperparams and "checkify" in str(e):
      raise ValueError(_CHECKIFY_NEEDED.format(name=c.name)) from e
    raise
  return treedef.unflatten(steps), new_state


def _transformation(
  c: _config.Config, arrays: dict[str, Any], eps: Any
) -> tuple[Callable[..., RMSPropState], Callable[..., Any]]:
  """(init_fn, update_fn) of a resolved configuration."""

  def init_fn(params: optax.Params) -> RMSPropState:
    return _init(c, eps, params)

  def update_fn(
    updates: optax.Updates,
    state: RMSPropState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, RMSPropState]:
    del extra_args
    return _update(c, arrays, updates, state, params)

  return init_fn, update_fn


def _validate_core(
  name: str,
  decay: Any,
  eps: Any,
  initial_scale: Any,
  eps_in_sqrt: Any,
  centered: Any,
  bias_correction: Any,
) -> None:
  _validate.check_range("decay", decay, low=0.0, high=1.0, high_open=True)
  # eps == 0 divides by zero wherever nu is 0 (a gradient element that has been
  # zero so far, or a constant gradient when centered): 0 * inf = NaN.
  _validate.check_range("eps", eps, low=0.0, low_open=True)
  # ... and so does an eps that rounds to 0 (or to a subnormal, flushed to 0)
  # in the step's dtype: checked here against the widest dtype a step can run
  # in, and per parameter dtype at init (float16 state: 6.1e-5).
  _validate.check_eps_normal(
    name, eps, _validate.smallest_normal_bound(), where="an update can run in at best"
  )
  _validate.check_range("initial_scale", initial_scale, low=0.0)
  _validate.check_bool("eps_in_sqrt", eps_in_sqrt)
  _validate.check_bool("centered", centered)
  _validate.check_bool("bias_correction", bias_correction)


def _storage(
  dtypes: tuple[Any, Any, Any],
  quantizations: tuple[Any, Any, Any],
  *,
  centered: Any,
  momentum: Any,
) -> tuple[tuple[str, str, str], tuple[Any, Any, Any]]:
  """Validated (storage forms, float dtypes) of nu, mu and momentum."""
  needs = (None, ("centered=True", centered), ("momentum", momentum))
  forms = tuple(
    _validate.check_quantization(buffer, quantization, dtype, need)
    for buffer, quantization, dtype, need in zip(
      _config.BUFFERS, quantizations, dtypes, needs, strict=True
    )
  )
  canonical = tuple(
    _validate.canonical_dtype(f"{buffer}_dtype", dtype, allow_complex=buffer != "nu")
    for buffer, dtype in zip(_config.BUFFERS, dtypes, strict=True)
  )
  return forms, canonical  # type: ignore[return-value]


def scale_by_rms(
  decay: ArrayLike = 0.9,
  eps: ArrayLike = 1e-8,
  initial_scale: ArrayLike = 0.0,
  eps_in_sqrt: bool = True,
  bias_correction: bool = False,
  *,
  centered: bool = False,
  nu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
  """Rescales updates by the root of the EMA of their squares.

  The RMSprop statistic without the learning rate (no sign flip): for each
  parameter, with gradient ``g``::

    nu = decay * nu + (1 - decay) * |g|**2
    u  = g / sqrt(nu_hat + eps)        (eps_in_sqrt=False: g / (sqrt(nu_hat) + eps))

  where ``nu_hat = nu / (1 - decay**t)`` with ``bias_correction`` and ``nu``
  otherwise. With ``centered=True`` the EMA of the gradients ``mu`` is kept
  too and ``max(nu_hat - |mu_hat|**2, 0)`` replaces ``nu_hat`` (Graves 2013,
  eq. 38-45). Same numbers as ``optax.scale_by_rms`` /
  ``optax.scale_by_stddev``, with one flat state.

  Args:
    decay: the EMA decay, in [0, 1).
    eps: > 0, added inside or outside the square root; at least the smallest
      normal number of the step's dtype (see :func:`rmsprop`).
    initial_scale: initial value of ``nu`` (>= 0).
    eps_in_sqrt: whether ``eps`` goes inside the square root.
    bias_correction: divide the EMAs by ``1 - decay**t``.
    centered: subtract the squared mean gradient (see above).
    nu_dtype: dtype of ``nu``; default the parameter's (real) dtype.

  Returns:
    An ``optax.GradientTransformation`` whose state is :class:`RMSPropState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_rms
    >>> tx = optax_rms.scale_by_rms(decay=0.5)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jnp.array([0.1, 3.0]), state)
    >>> print([f"{u:.4f}" for u in updates])
    ['1.4142', '1.4142']
  """
  name = "optax_rms.scale_by_rms"
  _validate_core(
    name, decay, eps, initial_scale, eps_in_sqrt, centered, bias_correction
  )
  config, arrays = _config.resolve(
    name=name,
    learning_rate=None,
    decay=decay,
    eps=eps,
    momentum=None,
    weight_decay=None,
    weight_decay_mode="coupled",
    weight_decay_mask=None,
    eps_in_sqrt=bool(eps_in_sqrt),
    centered=bool(centered),
    bias_correction=bool(bias_correction),
    dtypes=(
      _validate.canonical_dtype("nu_dtype", nu_dtype, allow_complex=False),
      None,
      None,
    ),
    initial_scale=initial_scale,
  )
  return optax.GradientTransformation(*_transformation(config, arrays, eps))


def rmsprop(
  # optax.ScalarOrSchedule itself, not the alias: optax's contract tests
  # (optax/contrib/_common_test.py) look for this object in the signature.
  learning_rate: optax.ScalarOrSchedule,
  decay: ArrayLike = 0.9,
  eps: ArrayLike = 1e-8,
  initial_scale: ArrayLike = 0.0,
  eps_in_sqrt: bool = True,
  centered: bool = False,
  momentum: ArrayLike | None = None,
  nesterov: bool = False,
  bias_correction: bool = False,
  *,
  weight_decay: ScalarOrSchedule | None = None,
  weight_decay_mask: MaskOrFn | None = None,
  weight_decay_mode: WeightDecayMode = "coupled",
  lr_in_momentum: bool = True,
  maximize: bool = False,
  nu_dtype: DTypeLike | None = None,
  mu_dtype: DTypeLike | None = None,
  momentum_dtype: DTypeLike | None = None,
  nu_quantization: Literal["8bit"] | None = None,
  mu_quantization: Literal["8bit"] | None = None,
  momentum_quantization: Literal["8bit"] | None = None,
  check_hyperparams: bool = False,
) -> GradientTransformationExtraArgs:
  """RMSprop (Hinton 2012, lecture 6e), every common variant, one state.

  Divides each gradient by the root of a running average of its recent
  squares, then scales it by the learning rate. The positional arguments are
  those of ``optax.rmsprop`` (same order and defaults) and give the same
  numbers (bit for bit when both are jitted: ``docs/numerics.md``, section
  "Same numbers as optax.rmsprop"); the keyword-only ones reproduce the
  other frameworks' variants. On the documentation site, the update is also
  written in mathematical notation.

  Per parameter ``p`` with gradient ``g``, at step ``t`` (0-based), with
  ``lr = learning_rate(t)``, ``wd = weight_decay(t)`` and the state's ``nu``,
  ``mu``, ``b`` (momentum buffer)::

    g  = -g                                  if maximize
    g  = g + wd * p                          weight_decay_mode="coupled" (L2)
    nu = decay * nu + (1 - decay) * |g|**2
    mu = decay * mu + (1 - decay) * g        centered
    v  = nu_hat                              not centered
    v  = max(nu_hat - |mu_hat|**2, 0)        centered
         x_hat = x / (1 - decay**(t+1)) with bias_correction, else x
    u  = g / sqrt(v + eps)                   eps_in_sqrt=True
    u  = g / (sqrt(v) + eps)                 eps_in_sqrt=False
    s  = -lr * u                             no momentum
    b  = momentum * b - lr * u;  s = b       lr_in_momentum=True (optax, Keras, TF1)
         Nesterov: s = -lr * u + momentum * b
    b  = momentum * b + u;  s = -lr * b      lr_in_momentum=False (PyTorch)
         Nesterov: s = -lr * (u + momentum * b)
    s  = s - lr * wd * p                     weight_decay_mode="decoupled"

  and the returned update is ``s`` (apply it with ``optax.apply_updates``).
  Both momentum placements agree for a constant learning rate; with a schedule
  the buffer of ``lr_in_momentum=True`` (optax, Keras, TF1) carries the old
  rates while PyTorch (``False``) rescales the whole buffer by today's.

  ``centered=True`` with ``bias_correction=True`` and ``initial_scale=0``:
  after one step the variance estimate ``nu_hat - |mu_hat|**2`` of a single
  sample is exactly 0, so the first update is ``-lr * g / sqrt(eps)``, and in
  floating point it is the difference of two equal numbers, so its rounding
  decides the step (optax returns NaN where it rounds negative; here it is
  clamped to 0).
  Prefer ``initial_scale > 0`` or no bias correction with ``centered``.

  Non-finite gradients propagate, as in optax: a NaN or inf gradient makes the
  matching ``nu`` and parameter non-finite. Wrap the optimizer in
  ``optax.apply_if_finite(tx, max_consecutive_errors)`` to skip such steps and
  keep the state clean.

  Args:
    learning_rate: ``lr``, a non-negative number or an ``optax.Schedule``
      of the 0-based step.
    decay: the EMA decay, in [0, 1).
    eps: > 0. Zero is refused: it divides by zero wherever ``v = 0`` (a
      gradient element that has been zero so far), and 0 * inf is NaN. So is
      a value below the smallest normal number of the dtype the step runs in
      (it rounds to 0 there): below float32's 1.18e-38 when the optimizer is
      built, below float16's 6.1e-5 at ``init`` for float16 parameters with
      ``nu_dtype="float16"``. A tiny value (``1e-30``) is nearly
      scale-invariant.
    initial_scale: initial ``nu`` (>= 0; TF1 uses 1).
    eps_in_sqrt: whether ``eps`` goes inside the square root.
    centered: use the centered second moment (Graves 2013, eq. 38-45).
    momentum: in [0, 1), or ``None`` for no momentum buffer.
    nesterov: Nesterov momentum (needs ``momentum``).
    bias_correction: debias the EMAs by ``1 - decay**(t+1)``.
    weight_decay: ``wd`` >= 0, a number or schedule; ``None`` or 0 is
      off.
    weight_decay_mask: which parameters decay: a pytree of bools (or a prefix
      of the params tree), or a function of the params returning one, as in
      ``optax.masked``. Default: all.
    weight_decay_mode: ``"coupled"`` (L2 added to the gradient before the
      statistics, as PyTorch/timm/MXNet) or ``"decoupled"`` (applied to the
      parameters, scaled by the learning rate, as AdamW / timm
      ``decoupled_decay`` / Keras 3).
    lr_in_momentum: whether the learning rate multiplies the update before it
      enters the momentum buffer (optax, Keras, TF1) or the buffer afterwards
      (PyTorch).
    maximize: ascend the objective instead of descending it.
    nu_dtype: dtype of ``nu`` (a real floating dtype); default the
      parameter's real dtype (as optax), except float32 for float16
      parameters, whose range cannot hold squared gradients (they overflow
      above 256 and underflow below ~2.4e-4). Statistics are computed in the
      wider of the gradient's and the state's dtype and stored in the state's.
    mu_dtype: dtype of ``mu`` (centered); default as ``nu_dtype``.
    momentum_dtype: dtype of the momentum buffer; default the parameter's.
    nu_quantization: ``"8bit"`` stores ``nu`` blockwise in 8 bits (uint8
      codes of a small float relative to each block's maximum, plus that
      maximum in float32 per block of 256: 1.016 bytes per parameter instead
      of 4), rounded stochastically (unbiased). With ``centered`` and ``nu``
      or ``mu`` in 8 bits, ``nu`` holds the variance ``nu - |mu|**2`` itself
      (its exact recurrence), which few-percent codes of ``nu`` or ``mu``
      could not resolve where the mean dominates. See ``optax_rms._quantize``
      and ``docs/numerics.md`` for its accuracy. ``None``: not quantized.
    mu_quantization: ``"8bit"`` stores ``mu`` (``centered``) in signed 8-bit
      blockwise codes (a sign and a 7-bit float, as FP8 E4M3, relative to
      each block's maximum), 1.016 bytes per parameter.
    momentum_quantization: ``"8bit"``: the momentum buffer in the same signed
      codes. With any buffer in 8 bits the step reads every buffer as stored
      (the decoded codes), so that no float32 copy of a leaf is kept at the
      peak of the update; a block never spans two parameters (also under
      ``pack_small``), and a non-finite element leaves its block's scale and
      neighbours alone.
    check_hyperparams: check, at every step, the hyperparameters not known
      when the optimizer is built (a schedule's value at that step, values
      set in ``optax.inject_hyperparams``' state): each must be finite and in
      its range, or the step reports its name, value and step through
      ``jax.experimental.checkify`` (run the step under
      ``checkify.checkify``; plain ``jit`` refuses it). Off by default, and
      then the step holds no check at all.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is one
    :class:`RMSPropState`.

  Raises:
    ValueError: a hyperparameter outside its range (the message names it and
      the allowed range), ``nesterov`` without ``momentum``, an unknown
      ``weight_decay_mode`` or dtype. Python numbers, NumPy scalars and
      concrete jax arrays are checked; only tracers (inside ``jit``) are not.
    TypeError: a hyperparameter of the wrong type. ``update`` raises
      TypeError for a state that is not an :class:`RMSPropState` (a raw
      checkpoint dict: restore it with a target), or whose buffers' dtypes
      differ from this configuration's, naming the field and the leaf.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_rms
    >>> def f(x):
    ...   return jnp.sum(x**2)
    >>> def fit(tx, steps=20):
    ...   params = jnp.array([1.0, 2.0, 3.0])
    ...   state = tx.init(params)
    ...   for _ in range(steps):
    ...     grads = jax.grad(f)(params)
    ...     updates, state = tx.update(grads, state, params)
    ...     params = optax.apply_updates(params, updates)
    ...   return params
    >>> params = fit(optax_rms.rmsprop(learning_rate=0.1, momentum=0.9))
    >>> print(f"{f(params):.3f}")
    0.834
    >>> ref = fit(optax.rmsprop(0.1, momentum=0.9))  # same numbers as optax
    >>> bool(jnp.allclose(params, ref, rtol=2e-6, atol=5e-7))  # float32 rounding
    True
  """
  name = "optax_rms.rmsprop"
  _validate_core(
    name, decay, eps, initial_scale, eps_in_sqrt, centered, bias_correction
  )
  _validate.check_scalar_or_schedule("learning_rate", learning_rate)
  if momentum is not None:
    _validate.check_range("momentum", momentum, low=0.0, high=1.0, high_open=True)
  _validate.check_bool("nesterov", nesterov)
  if nesterov and momentum is None:
    raise ValueError(
      "nesterov=True needs momentum (a number in [0, 1)), got momentum=None."
    )
  if weight_decay is not None:
    _validate.check_scalar_or_schedule("weight_decay", weight_decay)
  _validate.check_choice(
    "weight_decay_mode", weight_decay_mode, ("coupled", "decoupled")
  )
  _validate.check_bool("lr_in_momentum", lr_in_momentum)
  _validate.check_bool("maximize", maximize)
  _validate.check_bool("check_hyperparams", check_hyperparams)
  forms, dtypes = _storage(
    (nu_dtype, mu_dtype, momentum_dtype),
    (nu_quantization, mu_quantization, momentum_quantization),
    centered=centered,
    momentum=momentum,
  )
  config, arrays = _config.resolve(
    name=name,
    learning_rate=learning_rate,
    decay=decay,
    eps=eps,
    momentum=momentum,
    weight_decay=weight_decay,
    weight_decay_mode=weight_decay_mode,
    weight_decay_mask=weight_decay_mask,
    eps_in_sqrt=bool(eps_in_sqrt),
    centered=bool(centered),
    nesterov=bool(nesterov),
    bias_correction=bool(bias_correction),
    lr_in_momentum=bool(lr_in_momentum),
    maximize=bool(maximize),
    forms=forms,
    dtypes=dtypes,
    check_hyperparams=bool(check_hyperparams),
    initial_scale=initial_scale,
  )
  return optax.GradientTransformationExtraArgs(*_transformation(config, arrays, eps))
