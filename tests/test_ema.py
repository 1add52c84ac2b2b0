"""optax_rms.ema_params: the moving average of the parameters in the state.

Its agreement with Keras 3 (use_ema, ema_overwrite_frequency, with and without
gradient accumulation) is tested through compat.keras in tests/test_compat.py;
here, the wrapper on its own against a float64 NumPy reference of its
documented rule, and as an optax wrapper (jit, chain, inject_hyperparams,
MultiSteps, checkpoints, shardings, dtypes, errors).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tolerances import VS_FLOAT64, assert_close

import optax_rms

LR = 0.1
STEPS = 12


def _grads(seed=0):
  rng = np.random.default_rng(seed)
  return [
    {"w": rng.standard_normal((3, 2)).astype(np.float32), "b": rng.standard_normal(2)}
    for _ in range(STEPS)
  ]


def _params():
  return {"w": jnp.linspace(-1.0, 1.0, 6).reshape(3, 2), "b": jnp.ones(2)}


def _train(tx, params, grads, **extra):
  state = tx.init(params)
  step = jax.jit(tx.update)
  traj = []
  for g in grads:
    g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g)
    updates, state = step(g, state, params, **extra)
    params = optax.apply_updates(params, updates)
    traj.append((params, optax_rms.get_ema_params(state)))
  return traj, state


def _reference(params, grads, decay, overwrite_every, k):
  """ema_params' rule in float64 around SGD accumulated over k calls (mean)."""
  p = {n: np.asarray(v, np.float64) for n, v in params.items()}
  ema = dict(p)
  acc = {n: np.zeros_like(v) for n, v in p.items()}
  traj = []
  for t, g in enumerate(grads):
    for n in p:
      acc[n] = acc[n] + np.asarray(g[n], np.float64)
    if (t + 1) % k == 0:
      p = {n: p[n] - LR * acc[n] / k for n in p}
      acc = {n: np.zeros_like(v) for n, v in p.items()}
    applied = t // k
    m = 0.0 if applied == 0 else decay
    ema = {n: m * ema[n] + (1 - m) * p[n] for n in p}
    if overwrite_every is not None and (applied + 1) % overwrite_every == 0:
      p = dict(ema)
    traj.append((p, ema))
  return traj


@pytest.mark.parametrize(
  "decay,overwrite_every,k",
  [
    (0.9, None, 1),
    (0.5, 3, 1),
    (1.0, None, 1),
    (0.0, 2, 1),
    (0.8, None, 3),
    (0.7, 2, 2),
  ],
)
def test_matches_float64_reference(decay, overwrite_every, k):
  inner = optax.sgd(LR)
  if k > 1:
    inner = optax.MultiSteps(inner, every_k_schedule=k).gradient_transformation()
  tx = optax_rms.ema_params(
    inner, decay=decay, overwrite_every=overwrite_every, accumulation_steps=k
  )
  grads = _grads()
  got, _ = _train(tx, _params(), grads)
  want = _reference(_params(), grads, decay, overwrite_every, k)
  for t, ((p, e), (p_ref, e_ref)) in enumerate(zip(got, want, strict=True)):
    for n in p_ref:
      assert_close(p[n], p_ref[n], VS_FLOAT64, jnp.float32, err_msg=f"params {t}")
      assert_close(e[n], e_ref[n], VS_FLOAT64, jnp.float32, err_msg=f"ema {t}")


def test_average_differs_from_params_and_overwrite_lands_on_it():
  grads = _grads()
  tx = optax_rms.ema_params(optax.sgd(LR), 0.9, overwrite_every=4)
  traj, _ = _train(tx, _params(), grads)
  for t, (p, e) in enumerate(traj):
    same = all(bool(jnp.array_equal(p[n], e[n])) for n in p)
    # Written into the params after steps 4, 8, 12 (or equal at the first step).
    assert same == (t == 0 or (t + 1) % 4 == 0), t


def test_in_chain_with_inject_hyperparams_and_extra_args():
  grads = _grads()
  plain, _ = _train(
    optax.chain(optax.clip(0.5), optax_rms.ema_params(optax.adam(LR), decay=0.9)),
    _params(),
    grads,
  )
  injected = optax.inject_hyperparams(
    optax_rms.ema_params, static_args=("overwrite_every", "accumulation_steps")
  )(inner=optax.adam(LR), decay=0.9)
  tx = optax.chain(optax.clip(0.5), injected)
  got, state = _train(tx, _params(), grads, unused_extra_arg=1.0)
  for (p, e), (p_ref, e_ref) in zip(got, plain, strict=True):
    for n in p:
      np.testing.assert_array_equal(p[n], p_ref[n])
      np.testing.assert_array_equal(e[n], e_ref[n])
  assert isinstance(state[1].inner_state, optax_rms.EmaParamsState)


def test_jit_compiles_once_and_keeps_dtypes():
  params = {"w": jnp.ones(4, jnp.bfloat16), "b": jnp.zeros(2, jnp.float32)}
  tx = optax_rms.ema_params(optax_rms.rmsprop(1e-2), overwrite_every=2)
  state = tx.init(params)
  step = jax.jit(tx.update)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  for _ in range(3):
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert step._cache_size() == 1
  dtypes = {"w": jnp.bfloat16, "b": jnp.float32}
  assert jax.tree.map(lambda x: x.dtype, state.ema) == dtypes
  assert jax.tree.map(lambda x: x.dtype, params) == dtypes
  assert int(state.count) == 3


def test_state_shardings_give_the_average_its_parameters_sharding():
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  mesh = jax.make_mesh((1,), ("model",))
  params = jax.device_put(
    {"w": jnp.zeros((4, 2)), "b": jnp.zeros(2)},
    {"w": NamedSharding(mesh, P("model")), "b": NamedSharding(mesh, P())},
  )
  tx = optax_rms.ema_params(optax_rms.rmsprop(1e-3))
  shardings = optax_rms.sharding.state_shardings(tx, params)
  assert shardings.ema["w"].spec == P("model")
  assert shardings.inner_state.nu["w"].spec == P("model")
  assert shardings.count.is_fully_replicated


@pytest.mark.parametrize(
  "kwargs,error,pattern",
  [
    (dict(decay=1.5), ValueError, r"decay"),
    (dict(decay=-0.1), ValueError, r"decay"),
    (dict(overwrite_every=0), ValueError, r"overwrite_every must be an int in \[1, "),
    (dict(overwrite_every=2.0), TypeError, r"overwrite_every"),
    # Above the int32 step counter's range: once an OverflowError at update.
    (dict(overwrite_every=2**31), ValueError, r"overwrite_every .*2\*\*31 - 1\]"),
    (dict(accumulation_steps=0), ValueError, r"accumulation_steps"),
    (dict(accumulation_steps=True), TypeError, r"accumulation_steps"),
    (dict(accumulation_steps=2**40), ValueError, r"accumulation_steps .*2\*\*31"),
  ],
)
def test_arguments_checked_at_construction(kwargs, error, pattern):
  with pytest.raises(error, match=pattern):
    optax_rms.ema_params(optax.sgd(LR), **kwargs)


def test_update_without_params_and_lookups_that_find_nothing_are_errors():
  tx = optax_rms.ema_params(optax.sgd(LR))
  state = tx.init(_params())
  with pytest.raises(ValueError, match="params"):
    tx.update(_params(), state)
  with pytest.raises(ValueError, match="holds 0 EmaParamsState"):
    optax_rms.get_ema_params(optax.sgd(LR).init(_params()))
  with pytest.raises(ValueError, match="holds 2 EmaParamsState"):
    optax_rms.get_ema_params((state, state))
