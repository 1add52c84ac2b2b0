"""optax_rms.rmsprop inside optax's wrappers, JAX control flow and Flax.

Wherever optax offers the same composition, the same steps are run with
``optax.rmsprop`` in place of ``optax_rms.rmsprop`` and the two trajectories are
compared; the positional arguments of the two give the same numbers.
"""

import functools

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tolerances import SAME_MATH, assert_close

import optax_rms

VARIANTS = helpers.pick(
  "plain",
  "centered",
  "momentum",
  "centered-nesterov",
)
variants = pytest.mark.parametrize(
  "kwargs", list(VARIANTS.values()), ids=list(VARIANTS.keys())
)

LR = 0.05


def _params(dtype=jnp.float32, seed=0):
  kw, kb = jax.random.split(jax.random.PRNGKey(seed))
  return {
    "w": jax.random.normal(kw, (3, 4)).astype(dtype),
    "b": jax.random.normal(kb, (4,)).astype(dtype),
  }


def _grads(params, t, scale=1.0):
  """A fixed pseudo-random gradient for step t, shaped like params."""
  key = jax.random.fold_in(jax.random.PRNGKey(1), t)
  keys = jax.random.split(key, len(jax.tree.leaves(params)))
  leaves, treedef = jax.tree.flatten(params)
  return jax.tree.unflatten(
    treedef,
    [
      (scale * jax.random.normal(k, p.shape)).astype(p.dtype)
      for k, p in zip(keys, leaves, strict=True)
    ],
  )


def _loss(params):
  x = jnp.linspace(-1.0, 1.0, 12, dtype=params["w"].dtype).reshape(4, 3)
  y = jnp.ones((4, 4), params["w"].dtype)
  return jnp.mean(jnp.square(x @ params["w"] + params["b"] - y))


def _run(tx, params, grads_seq, **extra):
  """Applies tx to params for each gradient of grads_seq; returns params, state."""
  update = jax.jit(functools.partial(tx.update, **extra))
  state = tx.init(params)
  for g in grads_seq:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _assert_trees_close(actual, desired, dtype=jnp.float32):
  assert jax.tree.structure(actual) == jax.tree.structure(desired)
  for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired), strict=True):
    assert_close(a, d, SAME_MATH, dtype)


def _dtypes(tree):
  return jax.tree.map(lambda x: jnp.dtype(x.dtype), tree)


# --------------------------------------------------------------------- wrappers


@variants
def test_chain_after_clip_by_global_norm_matches_optax(kwargs):
  params = _params()
  # Scale 3: the global norm of these gradients is ~12, so clipping acts.
  grads_seq = [_grads(params, t, scale=3.0) for t in range(25)]
  assert float(optax.tree.norm(grads_seq[0])) > 1.0

  ours, _ = _run(
    optax.chain(optax.clip_by_global_norm(1.0), optax_rms.rmsprop(LR, **kwargs)),
    params,
    grads_seq,
  )
  ref, _ = _run(
    optax.chain(optax.clip_by_global_norm(1.0), optax.rmsprop(LR, **kwargs)),
    params,
    grads_seq,
  )
  _assert_trees_close(ours, ref)


def _inject_run(factory, params, schedule):
  """inject_hyperparams(factory), with lr and decay set in the state per step."""
  tx = optax.inject_hyperparams(factory)(learning_rate=0.1, decay=0.9, momentum=0.9)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for t, (lr, decay) in enumerate(schedule):
    if lr is not None:
      state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
      state.hyperparams["decay"] = jnp.asarray(decay, jnp.float32)
    updates, state = update(_grads(params, t), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_inject_hyperparams_changed_between_steps_matches_optax():
  params = _params()
  schedule = [(0.1, 0.9), (0.05, 0.5), (0.2, 0.99), (0.01, 0.0), (0.1, 0.7)] * 2
  ours, state = _inject_run(optax_rms.rmsprop, params, schedule)
  ref, _ = _inject_run(optax.rmsprop, params, schedule)
  _assert_trees_close(ours, ref)
  assert isinstance(state.inner_state, optax_rms.RMSPropState)
  assert float(state.hyperparams["decay"]) == pytest.approx(0.7)
  # The injected values are used: keeping the initial ones goes elsewhere.
  unchanged, _ = _inject_run(optax_rms.rmsprop, params, [(None, None)] * 10)
  assert not np.allclose(unchanged["w"], ours["w"], rtol=1e-3, atol=1e-3)


def test_inject_hyperparams_dtype_class_is_refused_with_advice():
  params = _params(jnp.bfloat16)
  # inject_hyperparams takes any callable for a schedule: jnp.float32 is one, so
  # the inner factory would receive jnp.float32(count), an array.
  tx = optax.inject_hyperparams(optax_rms.rmsprop)(
    learning_rate=0.1, nu_dtype=jnp.float32
  )
  with pytest.raises(ValueError, match=r"nu_dtype.*as a string.*static_args"):
    tx.init(params)

  for tx in [
    optax.inject_hyperparams(optax_rms.rmsprop)(learning_rate=0.1, nu_dtype="float32"),
    optax.inject_hyperparams(optax_rms.rmsprop, static_args=("nu_dtype",))(
      learning_rate=0.1, nu_dtype=jnp.float32
    ),
  ]:
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(_grads(params, 0), state, params)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.inner_state.nu))
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))


@variants
def test_multi_steps_matches_optax_under_jit(kwargs):
  params = _params()
  k = 3
  ms = optax.MultiSteps(optax_rms.rmsprop(LR, **kwargs), every_k_schedule=k)
  ms_ref = optax.MultiSteps(optax.rmsprop(LR, **kwargs), k)
  update, update_ref = jax.jit(ms.update), jax.jit(ms_ref.update)
  state, state_ref = jax.jit(ms.init)(params), jax.jit(ms_ref.init)(params)
  p, p_ref = params, params
  for t in range(3 * k):
    g = _grads(params, t)
    updates, state = update(g, state, p)
    updates_ref, state_ref = update_ref(g, state_ref, p_ref)
    p_before = p
    p = optax.apply_updates(p, updates)
    p_ref = optax.apply_updates(p_ref, updates_ref)
    if t % k != k - 1:  # accumulating: no step
      helpers.assert_trees_equal(p, p_before)
    _assert_trees_close(p, p_ref)
    _assert_trees_close(state.inner_opt_state.nu, optax.tree.get(state_ref, "nu"))
  assert int(state.inner_opt_state.count) == 3


def test_masked_matches_optax():
  params = _params()
  mask = {"w": True, "b": False}
  grads_seq = [_grads(params, t) for t in range(10)]
  ours, state = _run(
    optax.masked(optax_rms.rmsprop(LR, momentum=0.9), mask), params, grads_seq
  )
  ref, _ = _run(optax.masked(optax.rmsprop(LR, momentum=0.9), mask), params, grads_seq)
  _assert_trees_close(ours, ref)
  assert jax.tree.leaves(state.inner_state.nu["b"]) == []  # masked: no state
  assert state.inner_state.nu["w"].shape == params["w"].shape


@variants
def test_flatten_matches_unflattened_and_optax(kwargs):
  """optax.flatten(rmsprop): the recipe for trees of many small leaves
  (benchmarks/README.md): the state is one flat vector, the steps the same."""
  params = _params()
  grads_seq = [_grads(params, t) for t in range(10)]
  flat, state = _run(optax.flatten(optax_rms.rmsprop(LR, **kwargs)), params, grads_seq)
  leafwise, _ = _run(optax_rms.rmsprop(LR, **kwargs), params, grads_seq)
  ref, _ = _run(optax.flatten(optax.rmsprop(LR, **kwargs)), params, grads_seq)
  _assert_trees_close(flat, leafwise)
  _assert_trees_close(flat, ref)
  n = sum(p.size for p in jax.tree.leaves(params))
  assert state.nu.shape == (n,)  # optax.flatten keeps the inner state as is


def test_multi_transform_matches_optax():
  params = _params()
  labels = {"w": "rms", "b": "sgd"}
  grads_seq = [_grads(params, t) for t in range(10)]

  def make(rms):
    return optax.multi_transform(
      {"rms": rms(LR, centered=True), "sgd": optax.sgd(0.1)}, labels
    )

  ours, _ = _run(make(optax_rms.rmsprop), params, grads_seq)
  ref, _ = _run(make(optax.rmsprop), params, grads_seq)
  _assert_trees_close(ours, ref)
  # The sgd leaf moved as plain sgd: b - 0.1 * sum of gradients.
  expected_b = params["b"] - 0.1 * sum(g["b"] for g in grads_seq)
  assert_close(ours["b"], expected_b, SAME_MATH, jnp.float32)


# ------------------------------------------------------------- non-finite grads


def _bad(grads, value):
  return {**grads, "w": grads["w"].at[1, 2].set(value)}


@pytest.mark.parametrize(
  "kwargs", [dict(), dict(centered=True, momentum=0.9)], ids=["plain", "c-mom"]
)
def test_apply_if_finite_skips_nan_and_inf_steps(kwargs):
  params = _params()
  good = [_grads(params, t) for t in range(6)]
  # Steps 2 and 3 are bad; the rest are good.
  seq = [good[0], good[1], _bad(good[2], jnp.nan), _bad(good[3], jnp.inf)] + good[4:]

  tx = optax.apply_if_finite(optax_rms.rmsprop(LR, **kwargs), max_consecutive_errors=3)
  ref_tx = optax.apply_if_finite(optax.rmsprop(LR, **kwargs), max_consecutive_errors=3)
  update, update_ref = jax.jit(tx.update), jax.jit(ref_tx.update)
  state, state_ref = tx.init(params), ref_tx.init(params)
  p, p_ref = params, params
  for t, g in enumerate(seq):
    p_before, inner_before = p, state.inner_state
    updates, state = update(g, state, p)
    updates_ref, state_ref = update_ref(g, state_ref, p_ref)
    p = optax.apply_updates(p, updates)
    p_ref = optax.apply_updates(p_ref, updates_ref)
    if t in (2, 3):
      helpers.assert_trees_equal(p, p_before)
      helpers.assert_trees_equal(state.inner_state, inner_before)
      assert not bool(state.last_finite)
    else:
      assert bool(state.last_finite)
    for x in jax.tree.leaves((p, state.inner_state)):
      assert np.all(np.isfinite(x))
    assert int(state.notfinite_count) == {2: 1, 3: 2}.get(t, 0)
    assert int(state.total_notfinite) == (0 if t < 2 else 1 if t == 2 else 2)
    _assert_trees_close(p, p_ref)
    assert int(state.notfinite_count) == int(state_ref.notfinite_count)

  # Skipping is clean: the same as never seeing the two bad gradients (up to
  # XLA fusing the unwrapped update differently).
  skipped, plain_state = _run(
    optax_rms.rmsprop(LR, **kwargs), params, good[:2] + good[4:]
  )
  _assert_trees_close(p, skipped)
  _assert_trees_close(state.inner_state, plain_state)


@pytest.mark.parametrize("value", [jnp.nan, jnp.inf], ids=["nan", "inf"])
@pytest.mark.parametrize(
  "kwargs", [dict(), dict(centered=True, momentum=0.9)], ids=["plain", "c-mom"]
)
def test_unguarded_non_finite_gradient_spoils_only_its_element(kwargs, value):
  params = _params()
  seq = [_grads(params, 0), _bad(_grads(params, 1), value), _grads(params, 2)]
  p, state = _run(optax_rms.rmsprop(LR, **kwargs), params, seq)
  p_ref, state_ref = _run(optax.rmsprop(LR, **kwargs), params, seq)

  expected_finite = np.ones(params["w"].shape, bool)
  expected_finite[1, 2] = False
  np.testing.assert_array_equal(np.isfinite(p["w"]), expected_finite)
  np.testing.assert_array_equal(np.isfinite(state.nu["w"]), expected_finite)
  assert np.all(np.isfinite(p["b"])) and np.all(np.isfinite(state.nu["b"]))
  # The same values as optax, non-finite entries included (NaN where NaN).
  _assert_trees_close(p, p_ref)
  _assert_trees_close(state.nu, optax.tree.get(state_ref, "nu"))


# ------------------------------------------------------------ optax contracts


def test_update_accepts_unknown_extra_args():
  params = _params()
  tx = optax_rms.rmsprop(LR, momentum=0.9)
  state = tx.init(params)
  g = _grads(params, 0)
  expected = tx.update(g, state, params)
  got = tx.update(g, state, params, some_unknown_kwarg=1)
  helpers.assert_trees_equal(got, expected)
  got_jit = jax.jit(functools.partial(tx.update, some_unknown_kwarg=1))(
    g, state, params
  )
  _assert_trees_close(got_jit, expected)
  # Through a chain, which forwards extra args to every member.
  chained = optax.chain(optax.clip(1.0), tx)
  chained.update(g, chained.init(params), params, some_unknown_kwarg=1)


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(),
    dict(centered=True, momentum=0.9),
    dict(centered=True, momentum=0.9, nu_dtype="float32"),
  ],
  ids=["plain", "c-mom", "c-mom-nu32"],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_init_accepts_shape_dtype_struct(kwargs, dtype):
  params = _params(dtype)
  tx = optax_rms.rmsprop(LR, **kwargs)
  concrete = tx.init(params)
  expected = jax.tree.map(lambda x: (x.shape, jnp.dtype(x.dtype)), concrete)

  abstract_params = jax.tree.map(
    lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params
  )
  for abstract in [jax.eval_shape(tx.init, params), tx.init(abstract_params)]:
    assert isinstance(abstract, optax_rms.RMSPropState)
    got = jax.tree.map(lambda x: (x.shape, jnp.dtype(x.dtype)), abstract)
    assert got == expected
  nu_dtype = jnp.float32 if "nu_dtype" in kwargs else dtype
  assert all(x.dtype == nu_dtype for x in jax.tree.leaves(concrete.nu))
  assert concrete.count.shape == () and concrete.count.dtype == jnp.int32


def _parabola():
  target = jnp.array([1.0, -1.0, 1.0])
  return jnp.array([-1.0, 10.0, 1.0]), target, lambda p: jnp.sum(jnp.square(p - target))


def _rosenbrock():
  a, b = 1.0, 100.0
  fn = lambda p: jnp.square(a - p[0]) + b * jnp.square(p[1] - p[0] ** 2)
  return jnp.array([0.0, 0.0]), jnp.array([a, a**2]), fn


@variants
@pytest.mark.parametrize("problem", [_parabola, _rosenbrock], ids=["parabola", "rosen"])
def test_converges_under_scan(kwargs, problem):
  # A constant learning rate leaves RMSprop circling the optimum at a distance
  # of about lr (its steps have size ~lr whatever the gradient), 1/(1-momentum)
  # times more with momentum; a cosine decay to 0 lets every variant settle.
  steps = 5000
  tx = optax_rms.rmsprop(optax.cosine_decay_schedule(1e-2, steps), **kwargs)
  x0, x_star, fn = problem()

  def body(carry, _):
    x, state = carry
    updates, state = tx.update(jax.grad(fn)(x), state, x)
    return (optax.apply_updates(x, updates), state), None

  (x, state), _ = jax.jit(lambda c: jax.lax.scan(body, c, length=steps))(
    (x0, tx.init(x0))
  )
  assert int(state.count) == steps
  np.testing.assert_allclose(x, x_star, atol=1e-2)
  assert float(fn(x)) < 1e-3 * float(fn(x0))


DTYPE_CASES = {
  "plain": (dict(), jnp.bfloat16),
  "c-mom-nesterov": (dict(centered=True, momentum=0.9, nesterov=True), jnp.bfloat16),
  "bias_correction": (dict(bias_correction=True), jnp.bfloat16),
  "nu32": (dict(nu_dtype="float32"), jnp.float32),
  "nu32-c-mom": (dict(nu_dtype="float32", centered=True, momentum=0.9), jnp.float32),
}


@pytest.mark.parametrize(
  "kwargs, nu_dtype", list(DTYPE_CASES.values()), ids=list(DTYPE_CASES.keys())
)
def test_bfloat16_dtypes_kept_across_steps_and_lax_cond(kwargs, nu_dtype):
  params = _params(jnp.bfloat16)
  tx = optax_rms.rmsprop(LR, **kwargs)
  state = tx.init(params)
  state_dtypes = _dtypes(state)
  assert all(x == nu_dtype for x in jax.tree.leaves(state_dtypes.nu))
  # mu and the momentum buffer follow the parameters (mu_dtype etc. unset).
  for x in jax.tree.leaves((state_dtypes.mu, state_dtypes.momentum)):
    assert x == jnp.bfloat16

  @jax.jit
  def step(params, state, pred):
    grads = jax.grad(_loss)(params)
    # lax.cond needs both branches to agree in dtype: a float32 update or
    # state leaf leaking out of tx.update would raise a TypeError here.
    updates, new_state = jax.lax.cond(
      pred,
      lambda: tx.update(grads, state, params),
      lambda: (jax.tree.map(jnp.zeros_like, params), state),
    )
    state = jax.lax.cond(pred, lambda: new_state, lambda: state)
    return updates, optax.apply_updates(params, updates), state

  for t in range(4):
    updates, params, state = step(params, state, jnp.asarray(t != 1))
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))
    assert _dtypes(state) == state_dtypes
  assert int(state.count) == 3

  # Outside cond too, the first thing a user would look at.
  updates, state = jax.jit(tx.update)(jax.grad(_loss)(params), state, params)
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
  assert _dtypes(state) == state_dtypes


# ------------------------------------------------------------------------ flax


def _nnx_train(tx, steps=15):
  from flax import nnx

  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jnp.linspace(-1.0, 1.0, 24).reshape(8, 3)
  y = jnp.stack([jnp.sin(3 * x[:, 0]), x[:, 1] * x[:, 2]], axis=1)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    def loss_fn(model):
      return jnp.mean(jnp.square(model(x) - y))

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer, x, y)) for _ in range(steps)]
  params = nnx.state(model, nnx.Param)
  return losses, jax.tree.leaves(params), optimizer


def test_flax_nnx_optimizer_trains_and_matches_optax():
  losses, params, optimizer = _nnx_train(optax_rms.rmsprop(1e-2))
  _, params_ref, _ = _nnx_train(optax.rmsprop(1e-2))
  assert losses[-1] < 0.8 * losses[0]
  assert len(params) == 2  # kernel and bias
  for p, p_ref in zip(params, params_ref, strict=True):
    assert_close(p, p_ref, SAME_MATH, jnp.float32)
  assert int(optimizer.step[...]) == 15


def _linen_train(tx, steps=15):
  import flax.linen as nn
  from flax.training import train_state

  model = nn.Dense(2)
  x = jnp.linspace(-1.0, 1.0, 24).reshape(8, 3)
  y = jnp.stack([jnp.sin(3 * x[:, 0]), x[:, 1] * x[:, 2]], axis=1)
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  @jax.jit
  def train_step(state):
    def loss_fn(params):
      return jnp.mean(jnp.square(state.apply_fn({"params": params}, x) - y))

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  losses = []
  for _ in range(steps):
    state, loss = train_step(state)
    losses.append(float(loss))
  return losses, state


def test_flax_linen_train_state_trains_and_matches_optax():
  losses, state = _linen_train(optax_rms.rmsprop(1e-2, momentum=0.9))
  _, state_ref = _linen_train(optax.rmsprop(1e-2, momentum=0.9))
  assert losses[-1] < 0.8 * losses[0]
  assert isinstance(state.opt_state, optax_rms.RMSPropState)
  assert int(state.step) == 15
  _assert_trees_close(state.params, state_ref.params)
