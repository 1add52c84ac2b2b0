r"""RMSprop as one Optax gradient transformation.

This module is the one place where the update math lives: the second moment,
the centered mean, where eps sits, bias correction, momentum with the learning
rate inside or after the buffer, weight decay and maximize. Everything else in
the package (the framework presets included) only maps arguments onto
:func:`rmsprop`.
"""

import collections
import functools
import threading
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import optax

from optax_rms import _checks, _quantize, _validate

ScalarOrSchedule: TypeAlias = optax.ScalarOrSchedule
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
      variance ``nu - |mu|^2`` instead (see ``rmsprop``).
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

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count
  nu: optax.Updates
  mu: optax.Updates | None = None
  momentum: optax.Updates | None = None
  nu_scale: optax.Updates | None = None
  mu_scale: optax.Updates | None = None
  momentum_scale: optax.Updates | None = None


def _abs_sq(x: jax.Array) -> jax.Array:
  """|x|^2, real for complex x; the same HLO as optax for real x."""
  if jnp.iscomplexobj(x):
    return (x.conj() * x).real
  return jnp.square(x)


def _statistic_dtype(param_dtype: Any, requested: jnp.dtype | None) -> jnp.dtype:
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


def _buffer_dtype(
  param_dtype: Any, requested: jnp.dtype | None, *, statistic: bool = False
) -> jnp.dtype:
  """Dtype of mu/momentum: as requested, made complex for complex params."""
  is_complex = jnp.issubdtype(param_dtype, jnp.complexfloating)
  if requested is None:
    if statistic and not is_complex:
      return _statistic_dtype(param_dtype, None)
    return jax.dtypes.canonicalize_dtype(param_dtype)
  if is_complex:
    return jnp.promote_types(requested, jnp.complex64)
  return requested


def _state_dtype(
  field: str,
  param_dtype: Any,
  *,
  nu_dtype: jnp.dtype | None,
  mu_dtype: jnp.dtype | None,
  momentum_dtype: jnp.dtype | None,
  forms: dict[str, str],
) -> jnp.dtype:
  """The dtype init gives state field `field` for a parameter of `param_dtype`.

  The one place that says which dtype each buffer is stored in: init makes
  the buffers in it, and update checks a restored state against it (see
  _checks.check_state_dtypes). `forms`: each buffer's storage form.
  """
  if field.endswith("_scale"):  # 8-bit per-block maxima
    return jnp.dtype(jnp.float32)
  if forms.get(field, "float") != "float":
    return _quantize.stored_dtype(forms[field], None)
  if field == "nu":
    return _statistic_dtype(param_dtype, nu_dtype)
  if field == "mu":
    return _buffer_dtype(param_dtype, mu_dtype, statistic=True)
  if field == "momentum":
    return _buffer_dtype(param_dtype, momentum_dtype)
  raise ValueError(f"unknown state field {field!r}")


def _math_dtype(stored: Any) -> jnp.dtype:
  """The real dtype a stored buffer enters the math in (8-bit codes: float32)."""
  if not jnp.issubdtype(stored, jnp.inexact):
    return jnp.dtype(jnp.float32)
  return jnp.dtype(jnp.finfo(stored).dtype)


class _Static(NamedTuple):
  """The configuration that shapes the update's graph (hashable, jit-static)."""

  name: str  # the optimizer's, for error messages
  learning_rate_schedule: Callable[[jax.Array], Any] | None
  has_learning_rate: bool
  weight_decay_schedule: Callable[[jax.Array], Any] | None
  weight_decay_mode: str | None  # None: off
  weight_decay_mask: tuple[bool, ...]  # one flag per leaf
  eps_in_sqrt: bool
  centered: bool
  has_momentum: bool
  nesterov: bool
  bias_correction: bool
  lr_in_momentum: bool
  maximize: bool
  # Storage form of each buffer (_quantize.FORMS), and, when one is 8-bit,
  # each leaf's parameters (_quantize.leaf_segments: where blocks are cut).
  nu_form: str
  mu_form: str
  momentum_form: str
  segments: tuple[Any, ...]
  # Hyperparameters given as Python numbers, baked into the computation as
  # constants: see _apply.
  constants: tuple[tuple[str, float], ...] = ()
  # check_hyperparams=True: checkify checks of the values not checked at
  # construction (schedules, arrays from inject_hyperparams), at every step.
  check_hyperparams: bool = False
  # The requested state dtypes (None: the default), for _state_dtype.
  nu_dtype: jnp.dtype | None = None
  mu_dtype: jnp.dtype | None = None
  momentum_dtype: jnp.dtype | None = None


def _apply(
  updates: optax.Updates,
  state: RMSPropState,
  params: optax.Params | None,
  hyper: dict[str, Any],
  static: _Static,
) -> tuple[list[Any], RMSPropState]:
  """One RMSprop step over a whole tree: the only place the math lives.

  Run jitted, through :func:`_step_function` (one compiled step per
  configuration, kept in a bounded cache), so that an eager call is one
  dispatch instead of ~15 per leaf and eager and jitted calls compile the
  same program. Python-number hyperparameters are static
  (``static.constants``); array hyperparameters are arguments, so optimizers
  rebuilt every step with new arrays (as ``optax.inject_hyperparams`` does)
  reuse the compiled step.
  """
  # Hyperparameters that are Python numbers are compile-time constants here,
  # as they are when a caller jits a step that calls update: both calls then
  # compile the same program, and eager and jitted results agree bit for bit
  # (as arguments, XLA may contract a multiply-add into an FMA in one program
  # and not in the other). Arrays (inject_hyperparams) stay arguments.
  hyper = {**hyper, **dict(static.constants)}
  # Trees and shapes are static: checked here, while tracing, so an eager
  # call pays for it once per signature (a mismatch is a new signature).
  forms = {
    "nu": static.nu_form,
    "mu": static.mu_form,
    "momentum": static.momentum_form,
  }
  _checks.check_state_matches(static.name, updates, state)
  _checks.check_count(static.name, state.count)
  _checks.check_gradients_inexact(static.name, updates)
  _checks.check_state_dtypes(
    static.name,
    state,
    # The buffers' dtypes follow the parameters' (here only with weight
    # decay), else the gradients'.
    updates if params is None else params,
    lambda dtype, field: _state_dtype(
      field,
      dtype,
      nu_dtype=static.nu_dtype,
      mu_dtype=static.mu_dtype,
      momentum_dtype=static.momentum_dtype,
      forms=forms,
    ),
    ("nu", "nu_scale", "mu", "mu_scale", "momentum", "momentum_scale"),
  )
  # Any: jax's stubs omit PyTreeDef.flatten_up_to / num_leaves (they exist).
  treedef: Any = jax.tree.structure(updates)
  n_leaves = treedef.num_leaves

  def leaves_of(tree: Any) -> list[Any]:
    """One entry per gradient leaf; all None for a switched-off buffer."""
    return [None] * n_leaves if tree is None else treedef.flatten_up_to(tree)

  decay, eps, momentum = hyper["decay"], hyper["eps"], hyper["momentum"]
  count = state.count
  count_inc = optax.safe_increment(count)
  if static.learning_rate_schedule is not None:
    lr = static.learning_rate_schedule(count)
  else:
    lr = hyper["learning_rate"]
  if static.weight_decay_schedule is not None:
    wd = static.weight_decay_schedule(count)
  else:
    wd = hyper["weight_decay"]
  if static.check_hyperparams:
    _checks.checkify_hyperparams(
      count,
      {
        "learning_rate": lr if static.has_learning_rate else None,
        "weight_decay": wd if static.weight_decay_mode is not None else None,
        "decay": decay,
        "eps": eps,
        "momentum": momentum if static.has_momentum else None,
      },
      constants=dict(static.constants),
    )
  coupled_wd = static.weight_decay_mode == "coupled"
  decoupled_wd = static.weight_decay_mode == "decoupled"
  # As optax.tree.bias_correction: computed in float32 (decay**count can
  # round to 1 in low precision), divided in the moment's own dtype.
  debias = 1 - decay**count_inc if static.bias_correction else None

  def leaf(index, g, nu, nu_scale, mu, mu_scale, mom, mom_scale, p, decay_this_leaf):
    out_dtype = g.dtype
    segments = static.segments[index] if static.segments else ()
    # Everything read elementwise (gradient, parameter, each stored buffer)
    # and each 8-bit buffer's per-block scales.
    elements = {"g": g, "nu": nu, "mu": mu, "momentum": mom, "p": p}
    elements = {k: v for k, v in elements.items() if v is not None}
    blocks = {"nu": nu_scale, "mu": mu_scale, "momentum": mom_scale}
    blocks = {k: v for k, v in blocks.items() if v is not None}
    buffers = [k for k in ("nu", "mu", "momentum") if k in elements]
    stored_dtype = {k: elements[k].dtype for k in buffers}

    def leaf_math(elements, blocks, segments, store):
      """One step from what is stored: see _quantize.update.

      Elementwise, so that it also runs on a chunk of the leaf. Each buffer
      is decoded from its storage form (its own dtype, or 8-bit codes ->
      float32) and its new value handed to `store`, which stores it and
      returns the value the rest of the step uses.
      """
      g, p = elements["g"], elements.get("p")
      old = {
        k: _quantize.decode(forms[k], elements[k], blocks.get(k), segments)
        for k in buffers
      }
      nu, mu, mom = old["nu"], old.get("mu"), old.get("momentum")
      # The math runs in the widest real dtype among the gradient and the
      # state buffers; each buffer is stored back in its own dtype. Casting
      # the buffers up too (not only g) matters: `decay * nu` with a bfloat16
      # nu would round decay itself to bfloat16 (0.99 -> 0.98828), and the
      # EMA's weights would no longer sum to 1 (nu settles ~15% low at decay
      # 0.99). With every dtype equal (optax's case) nothing is cast.
      wide = functools.reduce(
        jnp.promote_types,
        [jnp.finfo(x.dtype).dtype for x in (g, nu, mu, mom) if x is not None],
      )

      def widen(x):
        return None if x is None else x.astype(jnp.promote_types(x.dtype, wide))

      g, nu, mu, mom = widen(g), widen(nu), widen(mu), widen(mom)
      if static.maximize:
        g = -g
      if coupled_wd and decay_this_leaf:
        g = g + wd * p  # L2: enters the statistics (PyTorch's weight_decay).

      if static.centered and (forms["nu"] != "float" or forms["mu"] != "float"):
        # Centered, with nu or mu in 8 bits: nu holds the variance
        # nu - |mu|^2 itself, as its exact recurrence
        # var = rho * (var + (1 - rho) |g - mu|^2): a few-% code of either
        # would make their difference meaningless wherever |mu|^2 is close
        # to nu.
        if debias is None:
          var = store("nu", decay * (nu + (1 - decay) * _abs_sq(g - mu)))
        else:
          # nu holds S = b * (nu_hat - |mu_hat|^2), b = 1 - decay^t, whose
          # recurrence adds only non-negative terms (nu_hat - |mu_hat|^2
          # from a stored nu - |mu|^2 would cancel two large terms):
          # S_t = decay * (S + (1 - decay) * (b'/b) |g - mu/b'|^2), b' the
          # previous step's b (0 at the first step, where the term is 0).
          b = debias.astype(nu.dtype)
          b_prev = (1 - decay**count).astype(nu.dtype)
          mean = mu / jnp.where(b_prev > 0, b_prev, 1)
          sq = _abs_sq(g - mean) * (b_prev / b)
          var = store("nu", decay * (nu + (1 - decay) * sq)) / b
        store("mu", (1 - decay) * g + decay * mu)
        var = jnp.maximum(var, 0)
      else:
        # Second moment (and first, centered) -- optax's order of operations.
        new_nu = store("nu", (1 - decay) * _abs_sq(g) + decay * nu)
        nu_hat = new_nu if debias is None else new_nu / debias.astype(new_nu.dtype)
        if static.centered:
          new_mu = store("mu", (1 - decay) * g + decay * mu)
          mu_hat = new_mu if debias is None else new_mu / debias.astype(new_mu.dtype)
          # nu - |mu|^2 >= 0 in exact arithmetic; clamp the rounding error that
          # would otherwise give sqrt(negative) = NaN.
          var = jnp.maximum(nu_hat - _abs_sq(mu_hat), 0)
        else:
          var = nu_hat
      if static.eps_in_sqrt:
        u = jax.lax.rsqrt(var + eps) * g
      else:
        u = 1 / (jnp.sqrt(var) + eps) * g
      if not static.has_momentum:
        return u, None
      if static.lr_in_momentum:  # optax / Keras / TF1: buf = m*buf - lr*u
        u = jnp.asarray(-lr).astype(u.dtype) * u  # as optax: lr in u's dtype
      return u, store("momentum", u + momentum * mom)  # PyTorch: buf = m*buf + u

    (u, new_mom), stored, stored_scale = _quantize.update(
      leaf_math,
      elements,
      blocks,
      segments,
      {k: forms[k] for k in buffers},
      stored_dtype,
      count_inc,
    )

    if not static.has_learning_rate:  # scale_by_rms: no lr, no sign flip.
      step = u
    else:
      neg_lr = jnp.asarray(-lr).astype(u.dtype)  # as optax: lr in u's dtype
      if not static.has_momentum:
        step = neg_lr * u
      elif static.lr_in_momentum:  # u is -lr * u here: step = buf (Nesterov:
        step = u + momentum * new_mom if static.nesterov else new_mom  # -lr*u+m*buf)
      else:  # PyTorch: step = -lr * buf (Nesterov: -lr * (u + m * buf))
        step = neg_lr * (u + momentum * new_mom if static.nesterov else new_mom)
      if decoupled_wd and decay_this_leaf:
        step = step + (neg_lr * wd) * p  # AdamW-style: -lr * wd * p.

    return (
      step.astype(out_dtype),
      stored["nu"],
      stored_scale.get("nu"),
      stored.get("mu"),
      stored_scale.get("mu"),
      stored.get("momentum"),
      stored_scale.get("momentum"),
    )

  # update() has checked that the state's buffers match the static config.
  out = [
    leaf(*args)
    for args in zip(
      range(n_leaves),
      leaves_of(updates),
      leaves_of(state.nu),
      leaves_of(state.nu_scale),
      leaves_of(state.mu),
      leaves_of(state.mu_scale),
      leaves_of(state.momentum),
      leaves_of(state.momentum_scale),
      leaves_of(params),
      static.weight_decay_mask,
      strict=True,
    )
  ]
  steps, nus, nu_scales, mus, mu_scales, moms, mom_scales = (
    zip(*out, strict=True) if out else ([],) * 7
  )
  unflatten = lambda xs: jax.tree.unflatten(treedef, list(xs))
  eight_bit = lambda form, xs: unflatten(xs) if form != "float" else None
  new_state = RMSPropState(
    count=count_inc,
    nu=unflatten(nus),
    mu=unflatten(mus) if static.centered else None,
    momentum=unflatten(moms) if static.has_momentum else None,
    nu_scale=eight_bit(static.nu_form, nu_scales),
    mu_scale=eight_bit(static.mu_form, mu_scales) if static.centered else None,
    momentum_scale=(
      eight_bit(static.momentum_form, mom_scales) if static.has_momentum else None
    ),
  )
  return list(steps), new_state


# Compiled steps, one per configuration (_Static, constants included), least
# recently used first. Python-number hyperparameters are compile-time
# constants of the step (see _apply): that is what makes an eager update equal
# the same update inside the user's jit bit for bit (benchmarks/eager_cache.md
# measures both), and it costs one compile per distinct value. The cache is
# bounded so that a sweep over many values (or many schedule objects, which
# are keys by identity) does not hold every compiled step, and the closures
# in their keys, for the life of the process: the oldest is dropped, with its
# compiled executable. CACHE_SIZE is far above the number of configurations
# one program updates in turn (one per optimizer, or per multi_transform
# label); more than that, updated round-robin in eager mode, would recompile.
CACHE_SIZE = 64
_compiled: collections.OrderedDict[_Static, Callable[..., Any]] = (
  collections.OrderedDict()
)
_compiled_lock = threading.Lock()


def _step_function(static: _Static) -> Callable[..., Any]:
  """The jitted step of configuration `static`, from the bounded cache."""
  with _compiled_lock:
    fn = _compiled.get(static)
    if fn is not None:
      _compiled.move_to_end(static)
      return fn
    fn = jax.jit(functools.partial(_apply, static=static))
    _compiled[static] = fn
    while len(_compiled) > CACHE_SIZE:
      _compiled.popitem(last=False)
    return fn


def _cache_size() -> int:
  """How many compiled-step configurations the cache holds (for tests)."""
  return len(_compiled)


_CHECKIFY_NEEDED = (
  "{name}(check_hyperparams=True) puts jax.experimental.checkify checks into "
  "the step; they only run under checkify.checkify, not eagerly nor under a "
  "plain jax.jit. Run the update (or the train step that calls it) as "
  "err, out = checkify.checkify(step)(...) and call err.throw(); or build "
  "the optimizer with check_hyperparams=False."
)


def _transformation(
  *,
  learning_rate: ScalarOrSchedule | None,
  decay: Any,
  eps: Any,
  initial_scale: Any,
  eps_in_sqrt: bool,
  centered: bool,
  momentum: Any | None,
  nesterov: bool,
  bias_correction: bool,
  weight_decay: ScalarOrSchedule | None,
  weight_decay_mask: Any,
  weight_decay_mode: WeightDecayMode,
  lr_in_momentum: bool,
  maximize: bool,
  nu_dtype: jnp.dtype | None,
  mu_dtype: jnp.dtype | None,
  momentum_dtype: jnp.dtype | None,
  nu_form: str,
  mu_form: str,
  momentum_form: str,
  name: str,
  check_hyperparams: bool = False,
) -> tuple[Callable[..., RMSPropState], Callable[..., Any]]:
  """Builds (init_fn, update_fn) for the validated configuration.

  ``learning_rate=None`` means no learning rate and no sign flip: the update is
  the rescaled gradient (that is :func:`scale_by_rms`).
  """
  # A literal 0 switches weight decay off; anything else (a schedule, an array
  # from inject_hyperparams) keeps it in the graph.
  use_wd = weight_decay is not None and not (
    isinstance(weight_decay, (int, float)) and weight_decay == 0
  )
  hyper = {
    "decay": decay,
    "eps": eps,
    "momentum": momentum,
    "learning_rate": None if callable(learning_rate) else learning_rate,
    "weight_decay": None if callable(weight_decay) or not use_wd else weight_decay,
  }
  # Python numbers are static (see _apply); everything else is an argument.
  constants = tuple(
    (k, float(v))
    for k, v in hyper.items()
    if isinstance(v, (int, float)) and not isinstance(v, bool)
  )
  hyper = {k: v for k, v in hyper.items() if k not in dict(constants)}

  forms = {"nu": nu_form, "mu": mu_form, "momentum": momentum_form}
  eight_bit = any(form != "float" for form in forms.values())

  def state_dtype(field: str, param_dtype: Any) -> jnp.dtype:
    return _state_dtype(
      field,
      param_dtype,
      nu_dtype=nu_dtype,
      mu_dtype=mu_dtype,
      momentum_dtype=momentum_dtype,
      forms=forms,
    )

  fields = ["nu"] + ["mu"] * centered + ["momentum"] * (momentum is not None)

  def check_eps(params: optax.Params) -> None:
    """eps must be a normal number in each leaf's compute dtype (see leaf)."""
    seen = set()
    for leaf in jax.tree.leaves(params):
      param_dtype = jnp.dtype(leaf.dtype)
      if param_dtype in seen:
        continue
      seen.add(param_dtype)
      compute = functools.reduce(
        jnp.promote_types,
        [_math_dtype(param_dtype)]
        + [_math_dtype(state_dtype(f, param_dtype)) for f in fields],
      )
      _validate.check_eps_normal(
        name, eps, compute, where=f"the update of a {param_dtype} parameter runs in"
      )

  def init_fn(params: optax.Params) -> RMSPropState:
    # Python numbers as leaves are accepted, as optax does ({'w': 3.0}).
    params = _checks.python_scalars_as_arrays(params)
    _checks.check_params_inexact(name, params)
    check_eps(params)
    leaves, treedef = jax.tree.flatten(params)
    segments = _quantize.leaf_segments(params) if eight_bit else [()] * len(leaves)

    def buffer(field, value, dtype_of):
      """(stored, scale) trees of one buffer, every element `value`."""
      pairs = [
        _quantize.init(forms[field], p, value, dtype_of(p.dtype), segs)
        for p, segs in zip(leaves, segments, strict=True)
      ]
      stored = treedef.unflatten([s for s, _ in pairs])
      scale = treedef.unflatten([c for _, c in pairs])
      return stored, scale if forms[field] != "float" else None

    if forms["mu"] != "float" or forms["momentum"] != "float":
      _checks.check_params_real(name, params, "mu_quantization / momentum_quantization")
    nu, nu_scale = buffer("nu", initial_scale, lambda dt: state_dtype("nu", dt))
    mu = mu_scale = momentum_buffer = momentum_scale = None
    if centered:
      mu, mu_scale = buffer("mu", 0, lambda dt: state_dtype("mu", dt))
    if momentum is not None:
      momentum_buffer, momentum_scale = buffer(
        "momentum", 0, lambda dt: state_dtype("momentum", dt)
      )
    return RMSPropState(
      count=jnp.zeros([], jnp.int32),
      nu=nu,
      mu=mu,
      momentum=momentum_buffer,
      nu_scale=nu_scale,
      mu_scale=mu_scale,
      momentum_scale=momentum_scale,
    )

  def update_fn(
    updates: optax.Updates,
    state: RMSPropState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, RMSPropState]:
    del extra_args
    _checks.check_state_type(name, state, RMSPropState)
    _checks.check_state(
      name,
      state,
      centered=centered,
      has_momentum=momentum is not None,
      forms=forms,
    )
    # Any: jax's stubs omit PyTreeDef.num_leaves / flatten_up_to (they exist).
    treedef: Any = jax.tree.structure(updates)
    if use_wd:
      if params is None:
        raise ValueError(
          f"{name}: weight_decay needs the parameters; call "
          "update(grads, state, params)."
        )
      _checks.check_params_match(name, updates, params)
      mask = _checks.resolve_mask(weight_decay_mask, params)
      flags = tuple(mask) if mask is not None else (True,) * treedef.num_leaves
    else:
      params, flags = None, (False,) * treedef.num_leaves
    static = _Static(
      name=name,
      learning_rate_schedule=learning_rate if callable(learning_rate) else None,
      has_learning_rate=learning_rate is not None,
      weight_decay_schedule=weight_decay if callable(weight_decay) else None,
      weight_decay_mode=weight_decay_mode if use_wd else None,
      weight_decay_mask=flags,
      eps_in_sqrt=eps_in_sqrt,
      centered=centered,
      has_momentum=momentum is not None,
      nesterov=nesterov,
      bias_correction=bias_correction,
      lr_in_momentum=lr_in_momentum,
      maximize=maximize,
      nu_form=nu_form,
      mu_form=mu_form,
      momentum_form=momentum_form,
      segments=tuple(_quantize.leaf_segments(updates)) if eight_bit else (),
      constants=constants,
      check_hyperparams=check_hyperparams,
      nu_dtype=nu_dtype,
      mu_dtype=mu_dtype,
      momentum_dtype=momentum_dtype,
    )
    try:
      steps, new_state = _step_function(static)(updates, state, params, hyper)
    except ValueError as e:
      if check_hyperparams and "checkify" in str(e):
        raise ValueError(_CHECKIFY_NEEDED.format(name=name)) from e
      raise
    return treedef.unflatten(steps), new_state

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


def scale_by_rms(
  decay: jax.typing.ArrayLike = 0.9,
  eps: jax.typing.ArrayLike = 1e-8,
  initial_scale: jax.typing.ArrayLike = 0.0,
  eps_in_sqrt: bool = True,
  bias_correction: bool = False,
  *,
  centered: bool = False,
  nu_dtype: Any | None = None,
) -> optax.GradientTransformation:
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
  _validate_core(
    "optax_rms.scale_by_rms",
    decay,
    eps,
    initial_scale,
    eps_in_sqrt,
    centered,
    bias_correction,
  )
  init_fn, update_fn = _transformation(
    learning_rate=None,
    decay=decay,
    eps=eps,
    initial_scale=initial_scale,
    eps_in_sqrt=bool(eps_in_sqrt),
    centered=bool(centered),
    momentum=None,
    nesterov=False,
    bias_correction=bool(bias_correction),
    weight_decay=None,
    weight_decay_mask=None,
    weight_decay_mode="coupled",
    lr_in_momentum=True,
    maximize=False,
    nu_dtype=_validate.canonical_dtype("nu_dtype", nu_dtype, allow_complex=False),
    mu_dtype=None,
    momentum_dtype=None,
    nu_form="float",
    mu_form="float",
    momentum_form="float",
    name="optax_rms.scale_by_rms",
  )
  return optax.GradientTransformation(init_fn, update_fn)


def rmsprop(
  learning_rate: ScalarOrSchedule,
  decay: jax.typing.ArrayLike = 0.9,
  eps: jax.typing.ArrayLike = 1e-8,
  initial_scale: jax.typing.ArrayLike = 0.0,
  eps_in_sqrt: bool = True,
  centered: bool = False,
  momentum: jax.typing.ArrayLike | None = None,
  nesterov: bool = False,
  bias_correction: bool = False,
  *,
  weight_decay: ScalarOrSchedule | None = None,
  weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
  weight_decay_mode: WeightDecayMode = "coupled",
  lr_in_momentum: bool = True,
  maximize: bool = False,
  nu_dtype: Any | None = None,
  mu_dtype: Any | None = None,
  momentum_dtype: Any | None = None,
  nu_quantization: Literal["8bit"] | None = None,
  mu_quantization: Literal["8bit"] | None = None,
  momentum_quantization: Literal["8bit"] | None = None,
  check_hyperparams: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""RMSprop (Hinton 2012, lecture 6e), every common variant, one state.

  Divides each gradient by the root of a running average of its recent
  squares, then scales it by the learning rate. The positional arguments are
  those of ``optax.rmsprop`` (same order and defaults) and give the same
  numbers (bit for bit when both are jitted; see README, "same numbers"); the
  keyword-only ones reproduce the other frameworks' variants.

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

  Note:
    The update above in mathematical notation (rendered on the
    documentation site), with :math:`\eta_t` = ``learning_rate(t)``,
    :math:`\lambda_t` = ``weight_decay(t)``, :math:`\rho` = ``decay``,
    :math:`\beta` = ``momentum``:

    .. math::
      g &\leftarrow \pm g_t \quad(\text{minus with } \texttt{maximize})\\
      g &\leftarrow g + \lambda_t\,\theta
        \quad(\texttt{weight\_decay\_mode="coupled"}, \text{L2})\\
      \nu_t &= \rho\,\nu_{t-1} + (1-\rho)\,|g|^2, \qquad
      \mu_t = \rho\,\mu_{t-1} + (1-\rho)\,g \quad(\texttt{centered})\\
      v &= \hat\nu_t \;\text{ or }\; \max(\hat\nu_t - |\hat\mu_t|^2, 0)
        \quad(\texttt{centered})\\
      \hat x &= x / (1-\rho^{t+1}) \text{ for } x = \nu_t, \mu_t
        \quad(\texttt{bias\_correction}; \text{ else } \hat x = x)\\
      u &= g / \sqrt{v + \epsilon}
        \quad\text{or}\quad g / (\sqrt{v} + \epsilon)
        \quad(\texttt{eps\_in\_sqrt=False})\\
      \text{no momentum:}\quad s &= -\eta_t u\\
      \texttt{lr\_in\_momentum=True:}\quad b_t &= \beta b_{t-1} - \eta_t u,
        \quad s = b_t \;\;(\text{Nesterov: } s = -\eta_t u + \beta b_t)\\
      \texttt{lr\_in\_momentum=False:}\quad b_t &= \beta b_{t-1} + u,
        \quad s = -\eta_t b_t \;\;(\text{Nesterov: } s = -\eta_t(u + \beta b_t))\\
      s &\leftarrow s - \eta_t \lambda_t\,\theta
        \quad(\texttt{weight\_decay\_mode="decoupled"})

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
  _validate_core(
    "optax_rms.rmsprop",
    decay,
    eps,
    initial_scale,
    eps_in_sqrt,
    centered,
    bias_correction,
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
  forms = {}
  for buffer, quantization, dtype, needs in (
    ("nu", nu_quantization, nu_dtype, None),
    ("mu", mu_quantization, mu_dtype, ("centered=True", centered)),
    ("momentum", momentum_quantization, momentum_dtype, ("momentum", momentum)),
  ):
    forms[buffer] = _validate.check_quantization(buffer, quantization, dtype, needs)
  init_fn, update_fn = _transformation(
    learning_rate=learning_rate,
    decay=decay,
    eps=eps,
    initial_scale=initial_scale,
    eps_in_sqrt=bool(eps_in_sqrt),
    centered=bool(centered),
    momentum=momentum,
    nesterov=bool(nesterov),
    bias_correction=bool(bias_correction),
    weight_decay=weight_decay,
    weight_decay_mask=weight_decay_mask,
    weight_decay_mode=weight_decay_mode,
    lr_in_momentum=bool(lr_in_momentum),
    maximize=bool(maximize),
    nu_dtype=_validate.canonical_dtype("nu_dtype", nu_dtype, allow_complex=False),
    mu_dtype=_validate.canonical_dtype("mu_dtype", mu_dtype, allow_complex=True),
    momentum_dtype=_validate.canonical_dtype(
      "momentum_dtype", momentum_dtype, allow_complex=True
    ),
    nu_form=forms["nu"],
    mu_form=forms["mu"],
    momentum_form=forms["momentum"],
    name="optax_rms.rmsprop",
    check_hyperparams=bool(check_hyperparams),
  )
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
