"""optax_rms.pack_small: the small leaves' state packed into flat vectors.

The packed steps are compared with the leafwise optax_rms.rmsprop and with
optax.rmsprop (same math, elementwise, so SAME_MATH per dtype).
"""

import functools
import math
import zlib

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
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
# Small enough that "w1" and "w2" (> 16 elements) pass through as they are,
# and that the five small float32 leaves make three groups (2 + 2 + 1).
PACK = dict(max_size=16, max_leaves=2)


def _params():
  keys = jax.random.split(jax.random.PRNGKey(0), 9)
  normal = jax.random.normal
  return {
    "w1": normal(keys[0], (5, 6)),
    "b1": normal(keys[1], (6,)),
    "scale": normal(keys[2], ()),
    "block": {"w2": normal(keys[3], (6, 3, 3)), "b2": normal(keys[4], (3,))},
    "gamma": normal(keys[5], (2, 2)),
    "beta": normal(keys[6], (7,)),
    "emb_bf16": normal(keys[7], (4,)).astype(jnp.bfloat16),
    "out_bf16": normal(keys[8], (3,)).astype(jnp.bfloat16),
  }


def _grads(params, t):
  def one(path, p):
    # crc32, not hash(): str hashes differ between processes (PYTHONHASHSEED).
    seed = zlib.crc32(f"{jax.tree_util.keystr(path)}/{t}".encode()) % 2**31
    return jax.random.normal(jax.random.PRNGKey(seed), p.shape).astype(p.dtype)

  return jax.tree_util.tree_map_with_path(one, params)


def _run(tx, params, grads_seq):
  update = jax.jit(tx.update)
  state = tx.init(params)
  for g in grads_seq:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _assert_trees_close(actual, desired):
  assert jax.tree.structure(actual) == jax.tree.structure(desired)
  for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired), strict=True):
    assert a.dtype == d.dtype and a.shape == d.shape
    assert_close(a, d, SAME_MATH, a.dtype)


@variants
def test_packed_trajectory_matches_leafwise_and_optax(kwargs):
  params = _params()
  grads_seq = [_grads(params, t) for t in range(12)]
  packed, _ = _run(
    optax_rms.pack_small(optax_rms.rmsprop(LR, **kwargs), **PACK), params, grads_seq
  )
  leafwise, _ = _run(optax_rms.rmsprop(LR, **kwargs), params, grads_seq)
  ref, _ = _run(optax.rmsprop(LR, **kwargs), params, grads_seq)
  _assert_trees_close(packed, leafwise)
  _assert_trees_close(packed, ref)


def test_layout_groups_small_leaves_by_dtype_and_count():
  params = _params()
  tx = optax_rms.pack_small(optax_rms.rmsprop(LR, momentum=0.9), **PACK)
  state = tx.init(params)
  assert isinstance(state.nu, optax_rms.PackedLeaves)
  # Tree order (sorted dict keys): b1, beta, block/b2, block/w2, emb_bf16,
  # gamma, out_bf16, scale, w1. Large: block/w2 (54) and w1 (30).
  assert [x.shape for x in state.nu.large] == [(6, 3, 3), (5, 6)]
  f32 = [6 + 7, 3 + 4, 1]  # (b1, beta), (b2, gamma), (scale)
  bf16 = [4 + 3]  # (emb_bf16, out_bf16)
  sizes = [(x.shape[0], x.dtype) for x in state.nu.small]
  assert sorted(sizes, key=str) == sorted(
    [(n, jnp.dtype(jnp.float32)) for n in f32]
    + [(n, jnp.dtype(jnp.bfloat16)) for n in bf16],
    key=str,
  )
  assert jax.tree.structure(state.momentum) == jax.tree.structure(state.nu)
  # Every element has exactly one place in the state.
  n = sum(x.size for x in jax.tree.leaves(params))
  assert sum(x.size for x in jax.tree.leaves(state.nu)) == n


def test_default_thresholds_pack_only_small_leaves():
  params = {
    "kernel": jnp.zeros((512, 512)),
    **{f"b{i}": jnp.zeros(512) for i in range(70)},
  }
  state = optax_rms.pack_small(optax_rms.rmsprop(LR)).init(params)
  assert [x.shape for x in state.nu.large] == [(512, 512)]
  # 70 vectors in groups of at most 32 leaves.
  assert [x.shape[0] for x in state.nu.small] == [32 * 512, 32 * 512, 6 * 512]


def test_empty_none_and_zero_size_leaves():
  tx = optax_rms.pack_small(optax_rms.rmsprop(LR, momentum=0.9))
  for params in (
    {},
    {"a": None, "b": jnp.ones(3)},
    {"z": jnp.zeros((0, 4)), "b": jnp.ones(3)},
  ):
    state = tx.init(params)
    updates, _ = jax.jit(tx.update)(params, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    want, _ = optax_rms.rmsprop(LR, momentum=0.9).update(
      params, optax_rms.rmsprop(LR, momentum=0.9).init(params), params
    )
    _assert_trees_close(updates, want)


def test_nonfinite_gradient_stays_in_its_leaf():
  """A NaN in one packed leaf must not reach the leaves packed beside it."""
  params = _params()
  tx = optax_rms.pack_small(optax_rms.rmsprop(LR, centered=True, momentum=0.9), **PACK)
  grads = _grads(params, 0)
  grads["b1"] = grads["b1"].at[2].set(jnp.nan)  # grouped with "beta"
  updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
  assert np.isnan(updates["b1"][2])
  finite = np.delete(np.asarray(updates["b1"]), 2)
  assert np.isfinite(finite).all()
  for name in ("beta", "scale", "gamma", "w1"):
    assert np.isfinite(np.asarray(updates[name])).all(), name
  # optax.apply_if_finite around it skips the whole step, as leafwise.
  guarded = optax.apply_if_finite(tx, max_consecutive_errors=3)
  g_state = guarded.init(params)
  updates, g_state = jax.jit(guarded.update)(grads, g_state, params)
  assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates))
  assert int(g_state.notfinite_count) == 1


def test_composes_with_optax_wrappers():
  params = _params()
  grads_seq = [_grads(params, t) for t in range(8)]

  def both(make):
    packed, _ = _run(
      make(lambda tx: optax_rms.pack_small(tx, **PACK)), params, grads_seq
    )
    leafwise, _ = _run(make(lambda tx: tx), params, grads_seq)
    _assert_trees_close(packed, leafwise)

  # Inside a chain, MultiSteps, inject_hyperparams, and masked.
  both(
    lambda wrap: optax.chain(optax.clip(0.5), wrap(optax_rms.rmsprop(LR, momentum=0.9)))
  )
  both(lambda wrap: optax.MultiSteps(wrap(optax_rms.rmsprop(LR, centered=True)), 2))
  both(
    lambda wrap: wrap(
      optax.inject_hyperparams(optax_rms.rmsprop)(learning_rate=LR, momentum=0.9)
    )
  )
  mask = jax.tree.map(lambda p: p.dtype == jnp.float32, params)
  both(lambda wrap: optax.masked(wrap(optax_rms.rmsprop(LR, momentum=0.9)), mask))


def test_extra_args_reach_inner():
  seen = {}

  def update(updates, state, params=None, *, loss=None):
    seen["loss"] = loss
    return updates, state

  inner = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
  tx = optax_rms.pack_small(inner)
  params = _params()
  tx.update(params, tx.init(params), params, loss=1.5)
  assert seen["loss"] == 1.5


@pytest.mark.parametrize(
  "kw, error, match",
  [
    (dict(max_size=-1), ValueError, "max_size must be an int >= 0"),
    (dict(max_size=4.0), TypeError, "max_size must be an int"),
    (dict(max_size=True), TypeError, "max_size must be an int"),
    (dict(max_leaves=0), ValueError, "max_leaves must be an int >= 1"),
    (dict(max_leaves=None), TypeError, "max_leaves must be an int"),
  ],
  ids=["size-negative", "size-float", "size-bool", "leaves-zero", "leaves-none"],
)
def test_bad_arguments_fail_at_construction(kw, error, match):
  with pytest.raises(error, match=match):
    optax_rms.pack_small(optax_rms.rmsprop(LR), **kw)


def test_mismatched_trees_fail_clearly():
  params = _params()
  tx = optax_rms.pack_small(optax_rms.rmsprop(LR), **PACK)
  state = tx.init(params)
  grads = _grads(params, 0)
  other = {**params, "b1": jnp.zeros((7,))}  # params with another shape
  with pytest.raises(ValueError, match="parameters and the gradients differ"):
    tx.update(grads, state, other)
  # A state from other parameters: the inner optimizer's own check names it.
  other_state = tx.init({k: v for k, v in params.items() if k != "scale"})
  with pytest.raises(ValueError):
    tx.update(grads, other_state, params)


def test_weight_decay_mask_inside_is_refused_with_the_way_out():
  params = _params()
  mask = jax.tree.map(lambda p: p.ndim > 1, params)
  tx = optax_rms.pack_small(
    optax_rms.rmsprop(LR, weight_decay=1e-2, weight_decay_mask=mask)
  )
  with pytest.raises(ValueError, match="mask outside it"):
    tx.update(_grads(params, 0), tx.init(params), params)


@pytest.mark.multidevice
@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_jit_sharded_big_leaf_passes_through(axis_type):
  """Data parallel with a sharded kernel: the kernel (above max_size) keeps
  its state sharded like itself; the replicated small leaves are packed."""
  mesh = jax.make_mesh((8,), ("x",), axis_types=(axis_type,))
  params = {"w": jnp.arange(64 * 4, dtype=jnp.float32).reshape(64, 4) / 100}
  params |= {f"b{i}": jnp.full((4,), 0.1 * i) for i in range(5)}
  specs = {k: P("x", None) if k == "w" else P() for k in params}
  shard = lambda tree: jax.tree.map(
    lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), tree, specs
  )
  grads_seq = [shard(_grads(params, t)) for t in range(5)]
  inner = functools.partial(optax_rms.rmsprop, LR, centered=True, momentum=0.9)
  want, _ = _run(inner(), params, [jax.device_get(g) for g in grads_seq])

  tx = optax_rms.pack_small(inner(), max_size=16)
  sharded = shard(params)
  step = jax.jit(tx.update)
  p = sharded
  with jax.set_mesh(mesh):
    state = jax.jit(tx.init)(sharded)
    for g in grads_seq:
      updates, state = step(g, state, p)
      p = optax.apply_updates(p, updates)
  _assert_trees_close(p, want)
  assert p["w"].sharding.is_equivalent_to(sharded["w"].sharding, 2)
  (w_nu,) = state.nu.large
  assert w_nu.sharding.is_equivalent_to(sharded["w"].sharding, 2)
  assert [x.shape for x in state.nu.small] == [(20,)]
  assert math.prod(w_nu.shape) == 256


@pytest.mark.multidevice
def test_sharding_helpers_see_through_the_pack():
  """state_shardings / zero1_state_shardings on a packed state: the big
  leaves' buffers mirror their parameters, the flat vectors are replicated
  (ZeRO-1: split over the data axis where they divide), a params-shaped part
  outside the pack (MultiSteps' accumulated gradients) mirrors the params,
  and 8-bit per-block scales, not params-shaped, are replicated."""
  from optax_rms import sharding

  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  params = {
    "a": jnp.zeros((16, 8)),
    "w": jnp.zeros((64, 32)),
    "b1": jnp.zeros(32),
    "b2": jnp.zeros(8),
  }
  specs = {"a": P(None, "model"), "w": P("model", None), "b1": P(), "b2": P()}
  params = jax.device_put(params, {k: NamedSharding(mesh, s) for k, s in specs.items()})
  pack = functools.partial(optax_rms.pack_small, max_size=64)
  tx = optax.MultiSteps(pack(optax_rms.rmsprop(LR, momentum=0.9)), 2)

  mirrored = sharding.state_shardings(tx, params)
  inner = mirrored.inner_opt_state
  for buf in (inner.nu, inner.momentum):
    assert [s.spec for s in buf.large] == [P(None, "model"), P("model", None)]
    assert [s.spec for s in buf.small] == [P()]  # b1 + b2: 40 elements
  assert {k: s.spec for k, s in mirrored.acc_grads.items()} == specs
  state = jax.jit(tx.init, out_shardings=mirrored)(params)
  assert state.inner_opt_state.nu.large[1].sharding.spec == P("model", None)

  zero1 = sharding.zero1_state_shardings(tx, params, "data").inner_opt_state
  assert [s.spec for s in zero1.nu.large] == [P("data", "model"), P("model", "data")]
  assert [s.spec for s in zero1.nu.small] == [P("data")]  # 40 divides by 2

  q = pack(optax_rms.rmsprop(LR, nu_quantization="8bit"))
  scales = sharding.state_shardings(q, params).nu_scale
  assert all(s.spec == P() for s in jax.tree.leaves(scales))
  codes = sharding.state_shardings(q, params).nu
  assert [s.spec for s in codes.large] == [P(None, "model"), P("model", None)]


@pytest.mark.multidevice
@pytest.mark.parametrize("helper", ["mirrored", "zero1"])
def test_sharding_helpers_find_packed_leaves_by_their_segments(helper):
  """Each large leaf of a packed buffer is found through
  ``PackedLeaves.segments`` (the parameter it holds), so it takes the rule of
  the same leaf unpacked: the 8-bit per-block scales of a big leaf too
  (start replicated, then ZeRO-1 splits them where they divide), where they
  were all left replicated when leaves were matched by shape. A node built by
  hand, without segments, is replicated."""
  from optax_rms import sharding

  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  specs = {"a": P(None, "model"), "w": P("model", None), "b": P()}
  params = {"a": jnp.zeros((16, 8)), "w": jnp.zeros((64, 32)), "b": jnp.zeros(8)}
  params = jax.device_put(params, {k: NamedSharding(mesh, s) for k, s in specs.items()})
  place = {
    "mirrored": sharding.state_shardings,
    "zero1": lambda tx, p: sharding.zero1_state_shardings(tx, p, "data"),
  }[helper]
  q = optax_rms.rmsprop(LR, nu_quantization="8bit")
  packed = place(optax_rms.pack_small(q, max_size=64), params)
  unpacked = place(q, params)
  for field in ("nu", "nu_scale"):
    got = [s.spec for s in getattr(packed, field).large]
    assert got == [getattr(unpacked, field)[k].spec for k in ("a", "w")], field
  if helper == "zero1":  # the scales of "w" (8 blocks) are split over "data"
    assert packed.nu_scale.large[1].spec == P("data")

  by_hand = optax_rms.PackedLeaves(large=(jnp.zeros((16, 8)),), small=(jnp.zeros(3),))
  hand = sharding.state_shardings(lambda p: by_hand, params)
  assert all(s.spec == P() for s in jax.tree.leaves(hand))


def test_a_state_packed_for_other_shapes_is_refused_naming_the_leaf():
  """The flat vectors of {'a': (3,), 'b': (5,)} and {'a': (5,), 'b': (3,)}
  have the same size: the state remembers each leaf's shape, and bare
  rmsprop's per-leaf check holds under pack_small too."""
  tx = optax_rms.pack_small(optax_rms.rmsprop(LR))
  state = tx.init({"a": jnp.zeros(3), "b": jnp.zeros(5)})
  swapped = {"a": jnp.ones(5), "b": jnp.ones(3)}
  with pytest.raises(ValueError, match=r"parameter \['a'\] of shape \(3,\).*\(5,\)"):
    tx.update(swapped, state, swapped)
  with pytest.raises(ValueError, match=r"\['a'\].*shape"):
    optax_rms.rmsprop(LR).update(
      swapped, optax_rms.rmsprop(LR).init({"a": jnp.zeros(3), "b": jnp.zeros(5)})
    )
