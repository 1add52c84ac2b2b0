"""Property tests (hypothesis): invariants of the update over random shapes,
dtypes, hyperparameters and gradient sequences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tolerances import SAME_MATH

import optax_rms

# Each example runs a few steps of a jitted update; shapes come from a small set
# so compiled steps are reused across examples (hyperparameters are traced
# arguments and do not recompile).
SETTINGS = settings(
  max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
SHAPES = [(3,), (2, 3)]
DTYPES = [jnp.float32, jnp.bfloat16]
# |g|^2 must fit the state's dtype (float32 / bfloat16 overflow at ~3.4e38):
# gradients up to 1e15 in magnitude, down to 1e-15, and exact zeros.
MAG = st.floats(-15, 15)


@st.composite
def gradient_sequences(draw):
  shape = draw(st.sampled_from(SHAPES))
  dtype = draw(st.sampled_from(DTYPES))
  n = draw(st.integers(1, 6))
  size = int(np.prod(shape))
  exps = draw(
    st.lists(st.lists(MAG, min_size=size, max_size=size), min_size=n, max_size=n)
  )
  signs = draw(
    st.lists(
      st.lists(st.sampled_from([-1.0, 0.0, 1.0]), min_size=size, max_size=size),
      min_size=n,
      max_size=n,
    )
  )
  g = (np.array(signs) * 10.0 ** np.array(exps)).reshape(n, *shape)
  return jnp.asarray(g, dtype), dtype


DECAY = st.floats(0.0, 0.999)
OPTIONS = st.fixed_dictionaries(
  {
    "centered": st.booleans(),
    "bias_correction": st.booleans(),
    "eps_in_sqrt": st.booleans(),
  }
)


def _run(tx, grads, dtype):
  p = jnp.zeros(grads.shape[1:], dtype)
  state = tx.init(p)
  steps, states = [], []
  for g in grads:
    u, state = tx.update(g, state, p)
    steps.append(u)
    states.append(state)
  return steps, states


def _f64(x):
  return np.asarray(x, np.float64)


@SETTINGS
@given(gradient_sequences(), DECAY, st.floats(0.0, 10.0), OPTIONS)
def test_nu_is_a_convex_combination_and_non_negative(seq, decay, initial, options):
  """nu_t lies between the smallest and largest of {initial_scale, g_i^2}."""
  grads, dtype = seq
  tx = optax_rms.rmsprop(0.1, decay=decay, initial_scale=initial, **options)
  _, states = _run(tx, grads, dtype)
  sq = _f64(grads) ** 2
  slack = 8 * float(jnp.finfo(dtype).eps)  # a few roundings per step
  for t, state in enumerate(states):
    nu = _f64(state.nu)
    assert np.all(nu >= 0)
    lo = np.minimum(initial, sq[: t + 1].min(axis=0))
    hi = np.maximum(initial, sq[: t + 1].max(axis=0))
    assert np.all(nu >= lo * (1 - slack) * (1 - slack) ** (t + 1) - 1e-38)
    assert np.all(nu <= hi * (1 + slack) ** (t + 1))


@SETTINGS
@given(gradient_sequences(), DECAY, st.floats(0.0, 1.0))
def test_step_never_exceeds_lr_over_sqrt_one_minus_decay(seq, decay, lr):
  """Non-centered, eps in sqrt, nu starting at 0, no momentum:
  |step| = lr |g| / sqrt(nu + eps) <= lr / sqrt(1 - decay), as nu >= (1-decay) g^2."""
  grads, dtype = seq
  steps, _ = _run(optax_rms.rmsprop(lr, decay=decay), grads, dtype)
  bound = lr / np.sqrt(1 - decay) * (1 + 8 * float(jnp.finfo(dtype).eps))
  for s in steps:
    assert np.all(np.abs(_f64(s)) <= bound)


@SETTINGS
@given(gradient_sequences(), DECAY, st.floats(-3, 3), st.booleans())
@example(  # found by hypothesis with eps=1e-30: nu ~3e-32, eps not negligible
  (jnp.array([[[-1, -1, -1], [-1, -1, -1e-9]]], jnp.float32), jnp.float32),
  0.96875,
  -3.0,
  False,
)
def test_scale_invariance_with_tiny_eps(seq, decay, log_c, bias_correction):
  """eps -> 0, no momentum, nu starting at 0, not centered: rescaling every
  gradient by c > 0 leaves the updates unchanged (up to rounding). (Centered
  is excluded: a variance of ~0, e.g. from constant gradients, is rounding
  noise, which does not scale.)"""
  grads, _ = seq
  grads = grads.astype(jnp.float32)  # c * g must not round differently
  grads = jnp.where(jnp.abs(grads) < 1e-9, 0.0, jnp.clip(grads, -1e9, 1e9))
  c = 10.0**log_c
  # eps must vanish beside the smallest nu a nonzero gradient leaves:
  # (1 - decay) * (c * g)^2 >= 1e-3 * (1e-3 * 1e-9)^2 = 1e-27, so eps = 1e-37
  # moves an update by <= 5e-11 (relative), far under rtol; float32 still
  # holds 1e-37 as a normal number (the smallest is ~1.2e-38).
  tx = optax_rms.rmsprop(0.1, decay=decay, eps=1e-37, bias_correction=bias_correction)
  a, _ = _run(tx, grads, jnp.float32)
  b, _ = _run(tx, grads * c, jnp.float32)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_allclose(_f64(x), _f64(y), rtol=1e-5, atol=1e-6)


@SETTINGS
@given(gradient_sequences(), DECAY, OPTIONS)
@example(  # found by hypothesis: maximize 1 ulp from the negated descent step
  (
    jnp.array([[[-1, -1, -1], [-1, -1, -4.697589]], -np.ones((2, 3))], jnp.float32),
    jnp.float32,
  ),
  0.6742251813112754,
  {"centered": True, "bias_correction": False, "eps_in_sqrt": False},
)
@example(  # found by hypothesis: nu / var = 80 after a jump to -316
  (
    jnp.array(
      [-np.ones((2, 3))] * 2 + [[[-1, -1, -1], [-1, -1, -316.22775]], -np.ones((2, 3))],
      jnp.float32,
    ),
    jnp.float32,
  ),
  0.01171875,
  {"centered": True, "bias_correction": False, "eps_in_sqrt": False},
)
def test_descent_direction_and_exact_maximize(seq, decay, options):
  """Without momentum or weight decay each step opposes its gradient; the
  update is odd in the gradients (negated gradients give exactly the negated
  steps: every operation is sign-symmetric); and maximize=True gives the
  negated steps.

  The last holds to float32 rounding, not bit for bit: maximize=True is a
  different XLA program (it negates g first), and XLA may contract a
  multiply-add into an FMA in one program and not in the other (seen on an
  AMD EPYC host: one element 1 ulp apart). So it is compared with SAME_MATH,
  the tolerance for the same math compiled differently, times the
  conditioning of the centered variance: var = nu - mu^2 cancels, and an ulp
  of nu or mu^2 is an error of ulp * nu / var in var (hypothesis found steps
  4e-6 and 8e-6 apart where nu / var was 66 and 80)."""
  grads, dtype = seq
  tx = optax_rms.rmsprop(0.1, decay=decay, **options)
  down, states = _run(tx, grads, dtype)
  mirrored, _ = _run(tx, -grads, dtype)
  up, _ = _run(
    optax_rms.rmsprop(0.1, decay=decay, maximize=True, **options), grads, dtype
  )
  tol = SAME_MATH[jnp.dtype(dtype)]
  for t, (g, d, m, u) in enumerate(zip(grads, down, mirrored, up, strict=True)):
    assert np.all(_f64(g) * _f64(d) <= 0)
    np.testing.assert_array_equal(_f64(m), -_f64(d))
    kappa = np.ones(g.shape)
    if options["centered"]:
      debias = 1 - decay ** (t + 1) if options["bias_correction"] else 1.0
      nu = _f64(states[t].nu) / debias
      var = nu - (_f64(states[t].mu) / debias) ** 2
      with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(var > 0, np.maximum(nu / var, 1.0), np.inf)
    err = np.abs(_f64(u) + _f64(d))
    assert np.all(err <= (tol["atol"] + tol["rtol"] * np.abs(_f64(d))) * kappa), (
      t,
      _f64(u),
      -_f64(d),
      kappa,
    )


@SETTINGS
@given(gradient_sequences(), DECAY, OPTIONS, st.one_of(st.none(), st.floats(0.0, 0.99)))
def test_finite_in_finite_out_and_eager_equals_jit(seq, decay, options, momentum):
  """Finite gradients give finite steps and state for every option (eps > 0
  and the clamp of the centered variance), and the eager update is the
  jitted one, bit for bit."""
  grads, dtype = seq
  tx = optax_rms.rmsprop(0.1, decay=decay, momentum=momentum, **options)
  eager, states = _run(tx, grads, dtype)
  p = jnp.zeros(grads.shape[1:], dtype)
  state = tx.init(p)
  update = jax.jit(tx.update)
  for g, e, s_e in zip(grads, eager, states, strict=True):
    u, state = update(g, state, p)
    assert np.all(np.isfinite(_f64(u)))
    assert all(np.all(np.isfinite(_f64(x))) for x in jax.tree.leaves(state))
    np.testing.assert_array_equal(_f64(u), _f64(e))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(s_e), strict=True):
      np.testing.assert_array_equal(_f64(a), _f64(b))


@pytest.mark.parametrize("dtype", DTYPES)
def test_update_is_deterministic(dtype):
  grads = jax.random.normal(jax.random.PRNGKey(0), (5, 4, 3)).astype(dtype)
  tx = optax_rms.rmsprop(0.1, centered=True, momentum=0.9)
  a, _ = _run(tx, grads, dtype)
  b, _ = _run(tx, grads, dtype)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(_f64(x), _f64(y))
