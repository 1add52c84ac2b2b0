"""Numerics under stress: low precision, eps at its bound, the state's
integrity through device_put and pickle, unbiased narrow-state averages."""

import pickle

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import reference_rmsprop
from tolerances import LOW_PRECISION_UPDATE

import optax_rms

VARIANTS = helpers.pick(
  "plain",
  "centered",
  "momentum",
  "bias_correction",
  "eps_outside",
)


def _wide_gradients(dtype, steps=30, shape=(64,), seed=0):
  """Gradients with magnitudes log-uniform over 1e-8..1e4 and random signs,
  rounded to `dtype` (what the optimizer really receives)."""
  rng = np.random.default_rng(seed)
  mags = 10.0 ** rng.uniform(-8, 4, size=(steps, *shape))
  g = mags * rng.choice([-1.0, 1.0], size=mags.shape)
  return np.asarray(jnp.asarray(g, dtype).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(
  "dtype", [jnp.float32, jnp.float16, jnp.bfloat16], ids=["f32", "f16", "bf16"]
)
def test_low_precision_updates_are_finite_and_match_float64(dtype, variant):
  kw = VARIANTS[variant]
  grads = _wide_gradients(dtype)
  params = {"x": np.ones(grads.shape[1])}
  ref_updates = [
    r["x"]
    for r in reference_rmsprop(
      params, [{"x": g} for g in grads], lr=0.01, return_updates=True, **kw
    )
  ]

  tx = optax_rms.rmsprop(0.01, **kw)
  p = {"x": jnp.ones(grads.shape[1], dtype)}
  state = tx.init(p)
  update = jax.jit(tx.update)
  for t, g in enumerate(grads):
    u, state = update({"x": jnp.asarray(g, dtype)}, state, p)
    assert u["x"].dtype == jnp.dtype(dtype)
    nu = np.asarray(state.nu["x"], np.float64)
    assert np.all(np.isfinite(nu)), f"step {t}: nu not finite"
    seen = np.any(grads[: t + 1] != 0, axis=0)
    assert np.all(nu[seen] > 0), f"step {t}: nu rounded to 0"
    assert np.all(np.isfinite(np.asarray(u["x"], np.float64))), f"step {t}"
    tol = dict(LOW_PRECISION_UPDATE[jnp.dtype(dtype)])
    if "momentum" in kw:
      # The buffer sums terms of size up to lr/sqrt(1-decay) with random signs
      # (at most 1/(1-momentum) of them effectively): its rounding is relative
      # to those terms, not to their possibly cancelled sum.
      tol["atol"] = tol["rtol"] * 0.01 / np.sqrt(1 - 0.9) / (1 - kw["momentum"])
    np.testing.assert_allclose(
      np.asarray(u["x"], np.float64),
      ref_updates[t],
      err_msg=f"{variant} step {t}",
      **tol,
    )


def test_float16_statistics_default_to_float32():
  p = {"x": jnp.ones(3, jnp.float16)}
  state = optax_rms.rmsprop(0.1, centered=True, momentum=0.9).init(p)
  assert state.nu["x"].dtype == jnp.float32
  assert state.mu["x"].dtype == jnp.float32
  assert state.momentum["x"].dtype == jnp.float16
  # The user's choice wins, with an eps float16 can hold: the default 1e-8
  # rounds to 0 in a float16 step, and is refused at init.
  state = optax_rms.rmsprop(0.1, nu_dtype="float16", eps=1e-4).init(p)
  assert state.nu["x"].dtype == jnp.float16
  with pytest.raises(ValueError, match=r"eps=1e-08 .*float16.*6\.104e-05"):
    optax_rms.rmsprop(0.1, nu_dtype="float16").init(p)


def test_float16_state_in_optax_overflows_where_ours_does_not():
  """Why float16 statistics default to float32: optax keeps them in float16."""
  p = jnp.ones(2, jnp.float16)
  g = jnp.array([300.0, 1e-6], jnp.float16)
  u_ref, _ = optax.rmsprop(0.01).update(g, optax.rmsprop(0.01).init(p))
  u_ours, _ = optax_rms.rmsprop(0.01).update(g, optax_rms.rmsprop(0.01).init(p))
  assert not np.all(np.isfinite(np.asarray(u_ref, np.float32)) & (u_ref != 0))
  assert np.all(np.isfinite(np.asarray(u_ours, np.float32)))
  assert np.all(np.asarray(u_ours) != 0)


F32_TINY = float(jnp.finfo(jnp.float32).smallest_normal)  # 1.175e-38
F16_TINY = float(jnp.finfo(jnp.float16).smallest_normal)  # 6.104e-05


@pytest.mark.parametrize("eps_in_sqrt", [True, False])
@pytest.mark.parametrize(
  "dtype,nu_dtype,eps",
  [
    (jnp.float32, None, F32_TINY),
    (jnp.bfloat16, None, F32_TINY),
    (jnp.float32, "bfloat16", F32_TINY),
    (jnp.float16, "float16", F16_TINY),
  ],
  ids=["f32", "bf16", "f32-bf16_state", "f16-f16_state"],
)
def test_eps_at_the_bound_gives_finite_updates_on_zero_gradients(
  dtype, nu_dtype, eps, eps_in_sqrt
):
  tx = optax_rms.rmsprop(
    0.1, eps=eps, eps_in_sqrt=eps_in_sqrt, nu_dtype=nu_dtype, centered=True
  )
  p = jnp.ones(4, dtype)
  state = tx.init(p)
  for _ in range(3):
    u, state = tx.update(jnp.zeros(4, dtype), state, p)
    np.testing.assert_array_equal(np.asarray(u, np.float32), 0.0)


# ----------------------------------------------------------- state integrity


def test_state_survives_device_put_and_pickle():
  tx = optax_rms.rmsprop(0.1, centered=True, momentum=0.9)
  p = {"w": jnp.arange(6.0).reshape(2, 3)}
  state = tx.init(p)
  _, state = tx.update(p, state, p)
  moved = jax.device_put(state, jax.devices()[-1])
  copied = pickle.loads(pickle.dumps(moved))
  u1, _ = tx.update(p, state, p)
  u2, _ = tx.update(p, copied, p)
  np.testing.assert_array_equal(u1["w"], u2["w"])


# ------------------------------------------------------------ narrow state


def test_narrow_state_dtype_does_not_bias_the_averages():
  """float32 gradients, bfloat16 state: the EMAs run in float32 and only the
  stored buffers are rounded. Rounding the decay to the state's dtype instead
  (0.99 -> 0.98828 in bfloat16) would leave the EMA weights summing to 0.998,
  and nu and mu would settle ~15% low; the momentum trace ~1.5% off."""
  n, steps = 4096, 2000

  def averages(**state_dtypes):
    tx = optax_rms.rmsprop(
      1e-3, decay=0.99, centered=True, momentum=0.9, **state_dtypes
    )
    params = {"w": jnp.zeros(n)}

    def body(state, key):
      grads = {"w": 0.5 + jax.random.normal(key, (n,))}  # E[g]=0.5, E[g^2]=1.25
      _, state = tx.update(grads, state, params)
      return state, tuple(
        jnp.mean(jnp.abs(x["w"].astype(jnp.float32)))
        for x in (state.nu, state.mu, state.momentum)
      )

    keys = jax.random.split(jax.random.key(0), steps)
    _, traces = jax.jit(lambda s: jax.lax.scan(body, s, keys))(tx.init(params))
    return [float(np.mean(t[steps // 2 :])) for t in traces]

  wide = averages()
  narrow = averages(nu_dtype="bfloat16", mu_dtype="bfloat16", momentum_dtype="bfloat16")
  # Same gradients: what is left is bfloat16's rounding noise of the stored
  # buffers (2^-9 relative per write, averaged over 4096 x 1000 values).
  for name, a, b in zip(("nu", "mu", "momentum"), narrow, wide, strict=True):
    assert a == pytest.approx(b, rel=0.01), name
