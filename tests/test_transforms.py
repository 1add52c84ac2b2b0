"""optax_rms under JAX transformations: jit with donation, vmap, pmap, sharding.

Every test runs a small least-squares problem (or a fixed gradient sequence) a few
steps through a transformed optimizer and compares against the same steps run
plainly. The 8 CPU devices come from the root conftest.py.
"""

import contextlib

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from tolerances import SAME_MATH

import optax_rms

VARIANTS = helpers.pick(
  "plain",
  "centered",
  "momentum",
  "centered-nesterov",
  "bias_correction",
  "wd-coupled",
  "wd-decoupled",
)
variants = pytest.mark.parametrize(
  "kwargs", list(VARIANTS.values()), ids=list(VARIANTS.keys())
)

LR = 0.05
STEPS = 4
N_DEVICES = 8
N_IN, N_OUT = 16, 8  # w is (16, 8): divisible by both meshes below.
BATCH = 2 * N_DEVICES

# Same float32 math with and without a transformation: see tolerances.SAME_MATH
# (an ulp budget at O(1); seen here: -0.0100486 vs -0.0100487 under jit).
F32_TOL = SAME_MATH[jnp.dtype(jnp.float32)]

COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all")


def _params(seed=0):
  kw, kb = jax.random.split(jax.random.PRNGKey(seed))
  return {
    "w": jax.random.normal(kw, (N_IN, N_OUT), jnp.float32),
    "b": 0.1 * jax.random.normal(kb, (N_OUT,), jnp.float32),
  }


def _batch(seed=1, batch=BATCH):
  kx, ky = jax.random.split(jax.random.PRNGKey(seed))
  x = jax.random.normal(kx, (batch, N_IN), jnp.float32)
  y = jax.random.normal(ky, (batch, N_OUT), jnp.float32)
  return x, y


def _loss(params, x, y):
  return jnp.mean(jnp.square(x @ params["w"] + params["b"] - y))


def _make_step(tx):
  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(_loss)(params, x, y)
    # params are passed so that weight decay (and any params-aware variant) runs.
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  return step


def _run_plain(tx, params, xs, ys):
  """STEPS steps, no transformation: the reference for every test."""
  step = _make_step(tx)
  state = tx.init(params)
  for x, y in zip(xs, ys, strict=True):
    params, state, _ = step(params, state, x, y)
  return params, state


def _batches(seed=1, batch=BATCH):
  data = [_batch(seed + t, batch) for t in range(STEPS)]
  return [x for x, _ in data], [y for _, y in data]


# --- jit ------------------------------------------------------------------------


@variants
def test_jit_with_donation_matches_eager_and_does_not_retrace(kwargs):
  tx = optax_rms.rmsprop(LR, **kwargs)
  xs, ys = _batches()
  want_params, want_state = _run_plain(tx, _params(), xs, ys)

  traces = 0

  def counted_step(params, state, x, y):
    nonlocal traces
    traces += 1  # Python side effect: runs once per trace, not per call.
    return _make_step(tx)(params, state, x, y)

  # Donating params and state: a donated buffer the output cannot reuse (a shape
  # or dtype that changed) warns, and warnings are errors in this test suite.
  step = jax.jit(counted_step, donate_argnums=(0, 1))
  params = _params()
  state = tx.init(params)
  for x, y in zip(xs, ys, strict=True):
    old_params, old_state = params, state
    params, state, loss = step(params, state, x, y)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old_params))
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old_state))
    assert np.isfinite(loss)

  assert traces == 1
  assert step._cache_size() == 1
  assert int(state.count) == STEPS
  helpers.assert_trees_close(params, want_params, **F32_TOL)
  helpers.assert_trees_close(state, want_state, **F32_TOL)


# --- vmap -----------------------------------------------------------------------

N_PROBLEMS = 3


def _grad_sequence(params, seed):
  """STEPS fixed gradients shaped like params: the optimizer alone, no loss."""
  keys = jax.random.split(jax.random.PRNGKey(seed), STEPS)
  return [
    jax.tree.map(lambda p, k=k: jax.random.normal(k, p.shape, p.dtype), params)
    for k in keys
  ]


@variants
def test_vmap_over_independent_problems_matches_each_alone(kwargs):
  # Fixed gradients rather than a loss: a vmapped matmul reduces in another order,
  # and RMSprop's g / sqrt(nu) turns that rounding of small gradients into
  # differences of many ulps; here only the optimizer is under vmap.
  tx = optax_rms.rmsprop(LR, **kwargs)
  problems = [_params(seed) for seed in range(N_PROBLEMS)]
  grads = [_grad_sequence(p, seed=100 + i) for i, p in enumerate(problems)]

  def step(params, state, g):
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state

  stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
  params = stack(problems)
  state = jax.vmap(tx.init)(params)
  batched_step = jax.jit(jax.vmap(step))
  for t in range(STEPS):
    params, state = batched_step(params, state, stack([g[t] for g in grads]))

  # vmap maps the counter too: one per problem, all equal.
  np.testing.assert_array_equal(state.count, np.full(N_PROBLEMS, STEPS))
  for i in range(N_PROBLEMS):
    want_params, want_state = problems[i], tx.init(problems[i])
    for g in grads[i]:
      want_params, want_state = step(want_params, want_state, g)
    member = lambda tree, i=i: jax.tree.map(lambda leaf: leaf[i], tree)
    helpers.assert_trees_close(member(params), want_params, **F32_TOL)
    helpers.assert_trees_close(member(state), want_state, **F32_TOL)


# --- pmap -----------------------------------------------------------------------


@pytest.mark.multidevice
@variants
def test_pmap_data_parallel_matches_single_device_full_batch(kwargs):
  # jax.pmap does not warn in jax 0.10 (it is rebuilt on shard_map); if a later
  # version deprecates it, the "error" filter in pyproject.toml makes this fail
  # loudly rather than pass silently: add a filterwarnings mark naming the message.
  assert jax.device_count() == N_DEVICES
  tx = optax_rms.rmsprop(LR, **kwargs)
  xs, ys = _batches()
  want_params, want_state = _run_plain(tx, _params(), xs, ys)

  def step(params, state, x, y):
    grads = jax.grad(_loss)(params, x, y)
    # Equal shards: the mean of per-device mean losses is the full-batch mean.
    grads = jax.lax.pmean(grads, axis_name="batch")
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  replicate = lambda tree: jax.tree.map(
    lambda a: jnp.broadcast_to(a, (N_DEVICES, *a.shape)), tree
  )
  shard = lambda a: a.reshape(N_DEVICES, -1, *a.shape[1:])
  p_step = jax.pmap(step, axis_name="batch")
  params = replicate(_params())
  state = jax.pmap(tx.init)(params)
  for x, y in zip(xs, ys, strict=True):
    params, state = p_step(params, state, shard(x), shard(y))

  for tree in (params, state):
    for leaf in jax.tree.leaves(tree):
      assert leaf.shape[0] == N_DEVICES
      assert len(leaf.sharding.device_set) == N_DEVICES
      for d in range(1, N_DEVICES):  # replicas must not drift, not even by an ulp
        np.testing.assert_array_equal(leaf[d], leaf[0])
  device0 = lambda tree: jax.tree.map(lambda leaf: leaf[0], tree)
  # The full-batch gradient sums in another order than pmean of the shards.
  helpers.assert_trees_close(device0(params), want_params, **F32_TOL)
  helpers.assert_trees_close(device0(state), want_state, **F32_TOL)


# --- jit + NamedSharding ------------------------------------------------------------

MESHES = {
  "1d": ((N_DEVICES,), ("x",), P("x", None)),
  "2d": ((2, 4), ("data", "model"), P("data", "model")),
}


def _assert_same_sharding(tree, params, what):
  for path, leaf, p in zip(
    [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(tree)],
    jax.tree.leaves(tree),
    jax.tree.leaves(params),
    strict=True,
  ):
    assert leaf.shape == p.shape, (what, path)
    assert leaf.sharding.is_equivalent_to(p.sharding, p.ndim), (
      what,
      path,
      leaf.sharding,
      p.sharding,
    )


@pytest.mark.multidevice
@variants
@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_jit_sharded_state_follows_params(kwargs, axis_type, mesh_name):
  shape, names, w_spec = MESHES[mesh_name]
  mesh = jax.make_mesh(shape, names, axis_types=(axis_type,) * len(shape))
  kwargs = dict(kwargs)
  if not kwargs.get("bias_correction"):
    # mu and the momentum buffer in every variant, so every state field is
    # checked. Not with bias_correction: centered + bias_correction has
    # nu_hat - mu_hat^2 = 0 exactly at step 1, so the step is g / sqrt(rounding
    # + eps), which no two compilations agree on (optax.rmsprop alike).
    kwargs.setdefault("centered", True)
    kwargs.setdefault("momentum", 0.9)
  tx = optax_rms.rmsprop(LR, **kwargs)

  plain_params = _params()
  plain_grads = _grad_sequence(plain_params, seed=7)
  want_state = tx.init(plain_params)
  want_params = plain_params
  for g in plain_grads:
    u, want_state = tx.update(g, want_state, want_params)
    want_params = optax.apply_updates(want_params, u)

  shardings = {
    "w": NamedSharding(mesh, w_spec),
    "b": NamedSharding(mesh, P(None)),  # replicated
  }
  # Explicit axes need the mesh in context for jit; with Auto axes it is optional.
  ctx = (
    jax.set_mesh(mesh) if axis_type == AxisType.Explicit else contextlib.nullcontext()
  )
  with ctx:
    params = jax.device_put(plain_params, shardings)
    grads = [jax.device_put(g, shardings) for g in plain_grads]

    if axis_type == AxisType.Explicit:
      # Sharding is part of the type: zeros_like(param) inherits it under jit.
      state = jax.jit(tx.init)(params)
    else:
      # With Auto axes jit cannot see the params' sharding in init (the new
      # buffers do not depend on param values; optax.rmsprop behaves the same),
      # so the state's shardings are given, derived with optax.tree_map_params.
      state_shardings = optax.tree_map_params(
        tx,
        lambda _, s: s,
        jax.eval_shape(tx.init, params),
        shardings,
        transform_non_params=lambda _: NamedSharding(mesh, P()),
      )
      state = jax.jit(tx.init, out_shardings=state_shardings)(params)

    update = jax.jit(tx.update)
    hlo = update.lower(grads[0], state, params).compile().as_text()
    found = [c for c in COLLECTIVES if c in hlo]
    assert not found, f"elementwise update should not communicate, found {found}"

    init_types = jax.tree.map(jax.typeof, state)
    apply = jax.jit(optax.apply_updates)
    for g in grads:
      updates, state = update(g, state, params)
      _assert_same_sharding(updates, params, "updates")
      params = apply(params, updates)

  fields = ["nu"]
  fields += ["mu"] if kwargs.get("centered") else []
  fields += ["momentum"] if kwargs.get("momentum") is not None else []
  assert [
    f for f in ("nu", "mu", "momentum") if getattr(state, f) is not None
  ] == fields
  for field in fields:
    _assert_same_sharding(getattr(state, field), params, field)
  for name, p in params.items():
    assert p.sharding.is_equivalent_to(shardings[name], p.ndim), (name, p.sharding)
  assert state.count.shape == ()
  assert state.count.sharding.is_fully_replicated
  if axis_type == AxisType.Explicit:
    # init and update agree on the state's type, sharding included.
    assert jax.tree.map(jax.typeof, state) == init_types

  helpers.assert_trees_close(params, want_params, **F32_TOL)
  helpers.assert_trees_close(state, want_state, **F32_TOL)
