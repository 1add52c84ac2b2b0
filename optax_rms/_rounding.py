r"""Updates of bfloat16 / float16 parameters that do not round away.

A bfloat16 parameter holds 8 significant bits: an update smaller than half
its unit in the last place (:math:`2^{-9}` relative) is lost entirely when
``optax.apply_updates`` rounds ``p + u`` back to bfloat16. Late in training
RMSprop's steps are of the order of the learning rate, far below that, and
training stalls. Zamirai et al. 2020 ("Revisiting BFloat16 Training",
arXiv:2010.06192) recover float32 quality with either of two fixes, both here
as wrappers around any optax transformation:

- :func:`kahan_summation` keeps what each rounding lost in a compensation
  buffer of the parameter's dtype (Kahan 1965) and adds it back next step.
- :func:`stochastic_rounding` rounds ``p + u`` up or down at random, with
  the probabilities that make the rounding unbiased; no per-parameter state.

Both compute in float32 and return, for each narrow leaf, the difference
between the new and the old parameter, chosen so that ``optax.apply_updates``
lands on the new parameter exactly (see :func:`kahan_summation` for when that
holds). Every rounding that matters is written with
``jax.lax.reduce_precision`` (bfloat16) or behind ``jax.lax.optimization_barrier``
(float16): XLA may drop a ``convert(convert(x, bf16), f32)`` pair under jit
("excess precision", jax-ml/jax#23007, openxla/xla#41605), which would silently
turn the compensation into zero.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from optax_rms import _checks, _hash, _validate
from optax_rms._types import (
  Array,
  GradientTransformation,
  GradientTransformationExtraArgs,
  OptState,
  Updates,
)

# The dtypes whose leaves get a compensation buffer / a stochastic rounding.
_NARROW = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_BITS = {jnp.dtype(jnp.bfloat16): jnp.uint16, jnp.dtype(jnp.float16): jnp.uint16}


class KahanSummationState(NamedTuple):
  """State of :func:`kahan_summation`.

  Attributes:
    inner_state: the wrapped transformation's state.
    compensation: a tree shaped like the parameters: for each bfloat16 /
      float16 leaf, what the last rounding of that parameter lost (an array of
      the parameter's shape and dtype); for every other leaf a scalar zero of
      the leaf's dtype (its compensation is identically zero; a scalar keeps
      the tree shaped like the parameters for ``optax.tree_map_params`` and
      ``optax_rms.sharding``, and orbax refuses zero-size arrays).
  """

  inner_state: OptState
  compensation: Updates


class StochasticRoundingState(NamedTuple):
  """State of :func:`stochastic_rounding`.

  Attributes:
    inner_state: the wrapped transformation's state.
    count: int32 scalar, the number of updates taken; with the seed and the
      leaf's index it picks the random bits of each step.
  """

  inner_state: OptState
  count: Array  # type: ignore[assignment]  # shadows tuple.count


def _is_narrow(dtype: Any, name: str = "", path: Any = ()) -> bool:
  """True for bfloat16 / float16; refuses other floats narrower than float32."""
  dtype = jnp.dtype(dtype)
  if dtype in _NARROW:
    return True
  if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
    raise TypeError(
      f"{name}: parameter {jax.tree_util.keystr(path) or '<root>'} has dtype "
      f"{dtype}; only bfloat16 and float16 parameters (and float32 / float64 "
      "ones, passed through) are supported."
    )
  return False


def _round(x: jax.Array, dtype: Any) -> jax.Array:
  """``x`` (float32) rounded to nearest-even in ``dtype``, as float32.

  Written so that XLA cannot elide the rounding (module docstring): for
  bfloat16 ``reduce_precision``, which equals ``x.astype(bfloat16)`` on every
  float32 input, subnormals included (tests/test_rounding.py checks); for
  float16 a cast behind an optimization barrier (``reduce_precision`` flushes
  float16's subnormals to zero, the cast does not). Wide dtypes: ``x``.
  """
  dtype = jnp.dtype(dtype)
  if dtype == jnp.bfloat16:
    return lax.reduce_precision(x, exponent_bits=8, mantissa_bits=7)
  if dtype == jnp.float16:
    return lax.optimization_barrier(x.astype(dtype)).astype(jnp.float32)
  return x


def _exact(u: jax.Array) -> jax.Array:
  """The inner update ``u`` as float32, at the precision of its own dtype.

  Under jit XLA may keep the inner transformation's last arithmetic in
  float32 instead of rounding it to ``u``'s dtype (the elided convert pair of
  the module docstring), and whether it does depends on fusion: rounding it
  here makes the result the same in every compilation (sharded or not,
  eager or jitted).
  """
  return _round(u.astype(jnp.float32), u.dtype)


def _stochastic_round(x: jax.Array, dtype: Any, key: jax.Array) -> jax.Array:
  """``x`` (float32) rounded at random to one of its two neighbours in
  ``dtype``, as float32, unbiased: E[result] = x exactly.

  bfloat16 is float32 cut to its upper 16 bits, and within a binade the
  value is linear in the bit pattern. So 16 uniform random bits are added to
  the lower half of ``x``'s pattern and the lower half is cut off: the cut
  value (the neighbour towards zero) is carried one step away from zero
  exactly when the addition carries, with probability ``L / 2**16`` for the
  lower half ``L``, which is ``x``'s distance from that neighbour in units of
  the step between the two (across a binade boundary and for subnormals
  too). Where the carry runs into the exponent's top (past bfloat16's
  largest finite value), or ``x`` is not finite, the nearest value is kept.
  All integer work: it fuses into the consumer, with no array of
  intermediates.

  float16 is not a cut float32: ``r`` is the nearest value and ``other`` the
  neighbour on the other side of ``x`` (one step of the bit pattern:
  sign-magnitude, so +1 is away from zero, subnormals included). ``other``
  is taken with probability ``f = |x - r| / |other - r|``: both differences
  are exact in float32 (Sterbenz), the denominator is a power of two (its
  reciprocal, exact, is taken from its exponent bits), so ``f`` is exact;
  it is compared with 32 uniform random bits as ``bits < f * 2**32``, an
  integer (``f`` has at most 24 significant bits and is at most 1/2), so the
  probability is ``f`` exactly.

  The bits are a counter-based hash of the element's index and ``key``
  (``_hash.element_bits``), computed where they are used: no array of
  random bits is materialized.
  """
  dtype = jnp.dtype(dtype)
  bits = _hash.element_bits(x.shape, key)
  if dtype == jnp.bfloat16:
    pattern = lax.bitcast_convert_type(x, jnp.uint32)
    cut = (pattern + (bits >> 16)) & jnp.uint32(0xFFFF0000)
    y = lax.bitcast_convert_type(cut, jnp.float32)
    return jnp.where(jnp.isfinite(y), y, _round(x, dtype))
  r = _round(x, dtype)
  away = jnp.abs(r) < jnp.abs(x)
  code = lax.bitcast_convert_type(r.astype(dtype), _BITS[dtype])
  code = jnp.where(away, code + 1, code - 1).astype(_BITS[dtype])
  other = lax.bitcast_convert_type(code, dtype).astype(jnp.float32)
  step = jnp.abs(other - r)  # a power of two, 2**-24 to 2**5, or inf / nan
  # Its reciprocal, exactly, from the exponent bits (2**e -> 2**-e): integer
  # work that fuses, where a division would be materialized by XLA:CPU.
  inverse = lax.bitcast_convert_type(
    jnp.uint32(254 << 23) - lax.bitcast_convert_type(step, jnp.uint32), jnp.float32
  )
  frac = jnp.abs(x - r) * inverse
  # r == x (frac 0), r infinite or nan, other infinite: keep r.
  frac = jnp.where(jnp.isfinite(step) & jnp.isfinite(x), frac, 0.0)
  threshold = (frac * 2.0**32).astype(jnp.uint32)
  return jnp.where(bits < threshold, other, r)


def _flat(name: str, updates: Any, params: Any, *others: Any) -> tuple[Any, list]:
  treedef: Any  # jax's stubs omit PyTreeDef.flatten_up_to (it exists)
  if params is None:
    raise ValueError(
      f"{name}: update needs the parameters: call tx.update(updates, state, "
      "params). The update it returns is the difference between the rounded "
      "new parameter and the old one, so it cannot be formed without them."
    )
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  rest = [treedef.flatten_up_to(t) for t in (updates, *others)]
  return treedef, [flat, *rest]


def kahan_summation(
  inner: GradientTransformation,
) -> GradientTransformationExtraArgs:
  """Kahan-compensated updates of bfloat16 / float16 parameters.

  For each parameter leaf of a dtype narrower than float32 (bfloat16,
  float16) a compensation buffer ``c`` of the parameter's dtype (2 bytes
  per bfloat16 parameter) keeps what the last rounding of that parameter
  lost. With ``u`` the inner transformation's update, all arithmetic in
  float32 and ``rnd`` the rounding to nearest in the
  parameter's dtype:

  ::

      x  = p + (u + c)
      p' = rnd(x);    delta = p' - p;    c' = rnd(x - p')

  and ``delta`` is returned (in the dtype of ``u``), so that
  ``optax.apply_updates(p, delta)`` — which computes
  ``(p + delta).astype(p.dtype)``
  — gives ``p'``. This is Kahan's compensated summation (Kahan 1965,
  "Further remarks on reducing truncation errors", Comm. ACM 8(1):40) of the
  parameter's updates, as in Zamirai et al. 2020 ("Revisiting BFloat16
  Training", arXiv:2010.06192): the pair ``(p, c)`` carries about twice
  the dtype's significant bits, so steps far below half an ulp of
  ``p`` accumulate in ``c`` until they move ``p``.

  **When the parameter lands exactly on** ``p'``: whenever
  ``p' - p`` is representable in the dtype of ``u``. By Sterbenz's
  lemma it is when ``p'`` and ``p`` have the same sign and
  ``p/2 <= p' <= 2p`` — every step of a small learning rate except
  those that cross zero — and when either is zero. A float32 update (float32
  gradients of bfloat16 parameters) is exact far more widely: in every case
  but ``|p'| < 2**-15|p|``. Otherwise (a parameter jumping across zero,
  or by more than a factor two) ``delta`` is rounded and the parameter
  lands on a neighbour of ``p'``; ``c'`` is then computed from where
  it lands, ``c' = rnd(x - rnd(p + delta))``, so nothing is lost: the
  difference is carried to the next step.
  The updates keep the inner updates' dtype, so ``optax.apply_if_finite``,
  ``optax.MultiSteps`` and ``lax.cond`` around this wrapper see the dtypes
  they expect.

  float32, float64 (and complex) leaves pass through untouched: their
  updates are the inner transformation's, and their compensation is a
  scalar zero (no buffer). ``update`` needs ``params``. Put this wrapper
  outermost (around ``optax.chain(...)``, ``pack_small(...)``,
  ``optax.inject_hyperparams(...)``): what comes after it would change the
  update it made exact. ``optax.apply_if_finite(kahan_summation(tx))``
  skips a step without touching ``p`` or ``c``. A zero inner update
  (``apply_if_finite`` inside) leaves them as they are wherever the last step
  landed exactly (then ``|c| <=`` half an ulp of ``p``, so
  ``rnd(p + c) = p``); after an inexact landing it applies
  the carried difference.

  Args:
    inner: the transformation whose updates are compensated.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a
    :class:`KahanSummationState`; extra arguments are passed to ``inner``.

  Raises:
    TypeError: ``inner`` is not a transformation; at ``init``, a parameter of
      a float8 (or other sub-16-bit) dtype; at ``update``, a state that is
      not a :class:`KahanSummationState`.

  Examples:
    Steps of 1e-3 on bfloat16 weights at 1.0 (half an ulp there is 3.9e-3)
    are all lost with plain rounding; with the compensation they add up:

    >>> import jax.numpy as jnp, optax, optax_rms
    >>> def train(tx, steps=100):
    ...   params = jnp.ones(3, jnp.bfloat16)
    ...   state = tx.init(params)
    ...   for _ in range(steps):
    ...     grads = jnp.full(3, -1.0, jnp.bfloat16)
    ...     updates, state = tx.update(grads, state, params)
    ...     params = optax.apply_updates(params, updates)
    ...   return params
    >>> print(f"{float(train(optax.sgd(1e-3))[0]):.4f}")
    1.0000
    >>> print(f"{float(train(optax_rms.kahan_summation(optax.sgd(1e-3)))[0]):.4f}")
    1.1016
  """
  name = "optax_rms.kahan_summation"
  _validate.check_inner(name, inner)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params: optax.Params) -> KahanSummationState:
    def zeros(path, p):
      if _is_narrow(p.dtype, name, path):
        return jnp.zeros_like(p, dtype=p.dtype)
      return jnp.zeros((), p.dtype)

    return KahanSummationState(
      inner_state=inner.init(params),
      compensation=jax.tree_util.tree_map_with_path(zeros, params),
    )

  def leaf(p: jax.Array, u: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    p32 = p.astype(jnp.float32)
    x = p32 + (_exact(u) + c.astype(jnp.float32))
    new = _round(x, p.dtype)
    delta = _round(new - p32, u.dtype)
    # Where optax.apply_updates will land: (p + delta) in float32 (p's dtype
    # when u's is p's: XLA computes it in float32 and rounds once, the same
    # value), rounded to p's dtype.
    landed = _round(p32 + delta, p.dtype)
    return delta.astype(u.dtype), (x - landed).astype(p.dtype)

  def update_fn(
    updates: optax.Updates,
    state: KahanSummationState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, KahanSummationState]:
    _checks.check_wrapper_state(name, state, KahanSummationState)
    _flat(name, updates, params)  # the params check, before the inner update
    inner_updates, inner_state = inner.update(
      updates, state.inner_state, params, **extra_args
    )
    treedef, (flat, us, cs) = _flat(name, inner_updates, params, state.compensation)
    new_us, new_cs = [], []
    for (path, p), u, c in zip(flat, us, cs, strict=True):
      if _is_narrow(p.dtype, name, path):
        u, c = leaf(p, u, c)
      new_us.append(u)
      new_cs.append(c)
    return treedef.unflatten(new_us), KahanSummationState(
      inner_state=inner_state, compensation=treedef.unflatten(new_cs)
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def stochastic_rounding(
  inner: GradientTransformation,
  seed: int = 0,
) -> GradientTransformationExtraArgs:
  """Stochastically rounded updates of bfloat16 / float16 parameters.

  For each parameter leaf of a dtype narrower than float32 (bfloat16,
  float16), with ``u`` the inner transformation's update and
  ``x = p + u`` computed in float32, the new parameter is one of the two
  neighbours ``x_down <= x <= x_up`` in the parameter's
  dtype, drawn independently per element:

  ::

      p' = x_up     with probability (x - x_down) / (x_up - x_down)
      p' = x_down   otherwise,          so that E[p'] = x

  exactly (the probability is compared with 32 random bits as an integer,
  with no rounding). A step far below half an ulp still moves the parameter
  by a whole ulp now and then, as often as makes it right on average
  (Gupta et al. 2015, "Deep Learning with Limited Numerical Precision";
  Zamirai et al. 2020, "Revisiting BFloat16 Training", arXiv:2010.06192).
  The difference ``p' - p`` is returned, in the dtype of ``u``, so
  that ``optax.apply_updates`` lands on ``p'`` (exactly under the
  conditions given in :func:`kahan_summation`; elsewhere, on its nearest
  neighbour).

  The random bits are a counter-based integer hash of ``seed``, the number
  of updates taken (the state's ``count``), the leaf's index in the tree and
  the element's index: runs are reproducible,
  every replica of a data-parallel step draws the same bits (so replicas do
  not drift), a sharded leaf draws the bits of the unsharded one, and no key
  is threaded by the user. The bits are computed where they are used, so
  no array of them is materialized (the step needs no memory for them). No
  per-parameter state: only the step counter.
  float32, float64 (and complex) leaves pass through untouched. ``update``
  needs ``params``. Put this wrapper outermost, as :func:`kahan_summation`.

  Args:
    inner: the transformation whose updates are rounded stochastically.
    seed: an int in ``[0, 2**32)``: the random stream.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a
    :class:`StochasticRoundingState`; extra arguments are passed to
    ``inner``.

  Raises:
    TypeError: ``inner`` is not a transformation or ``seed`` not an int; at
      ``init``, a parameter of a float8 (or other sub-16-bit) dtype; at
      ``update``, a state that is not a :class:`StochasticRoundingState`.
    ValueError: ``seed`` outside ``[0, 2**32 - 1]``.

  Examples:
    Steps of 1e-3 on 1000 bfloat16 weights at 1.0: each moves by a whole
    ulp (2^-7) with probability 1e-3 / 2^-7, so on average by 1e-3 per step:

    >>> import jax.numpy as jnp, optax, optax_rms
    >>> tx = optax_rms.stochastic_rounding(optax.sgd(1e-3), seed=0)
    >>> params = jnp.ones(1000, jnp.bfloat16)
    >>> state = tx.init(params)
    >>> for _ in range(100):
    ...   grads = jnp.full(1000, -1.0, jnp.float32)  # a float32 step: exactly 1e-3
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(f"{float(params.astype(jnp.float32).mean()):.2f}")  # 1 + 100 * 1e-3
    1.10
  """
  name = "optax_rms.stochastic_rounding"
  _validate.check_inner(name, inner)
  inner = optax.with_extra_args_support(inner)
  seed = _validate.check_int_in("seed", seed, low=0, high=2**32 - 1, what=name)

  def init_fn(params: optax.Params) -> StochasticRoundingState:
    for path, p in jax.tree_util.tree_leaves_with_path(params):
      _is_narrow(p.dtype, name, path)
    return StochasticRoundingState(
      inner_state=inner.init(params), count=jnp.zeros([], jnp.int32)
    )

  def update_fn(
    updates: optax.Updates,
    state: StochasticRoundingState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, StochasticRoundingState]:
    _checks.check_wrapper_state(name, state, StochasticRoundingState)
    _flat(name, updates, params)
    inner_updates, inner_state = inner.update(
      updates, state.inner_state, params, **extra_args
    )
    treedef, (flat, us) = _flat(name, inner_updates, params)
    new_us = []
    for index, ((path, p), u) in enumerate(zip(flat, us, strict=True)):
      if _is_narrow(p.dtype, name, path):
        p32 = p.astype(jnp.float32)
        key = _hash.key(seed, state.count, index)
        new = _stochastic_round(p32 + _exact(u), p.dtype, key)
        u = _round(new - p32, u.dtype).astype(u.dtype)
      new_us.append(u)
    return treedef.unflatten(new_us), StochasticRoundingState(
      inner_state=inner_state, count=optax.safe_increment(state.count)
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
