"""Small leaves with 8-bit state are updated together (optax_rms._group).

The promise: each leaf's numbers are those of the leaf updated alone (the
same math, blocks and random bits), the state laid out as before (one buffer
per leaf), and one encoding in the compiled step for the whole group instead
of one per leaf. The grouped step is another XLA program, which may fuse a
multiply-add into one rounding where the per-leaf program rounds twice: a
float number can differ in its last bits (SAME_MATH), and a code whose value
sat on the boundary between two codes by one code.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import SAME_MATH, assert_close

import optax_rms
from optax_rms import _group, _jit_cache

EIGHT_BIT = dict(
  nu_quantization="8bit", mu_quantization="8bit", momentum_quantization="8bit"
)
# Sizes around the block (256) and the group limits, a scalar, and one leaf
# too big to group.
SHAPES = [(), (3,), (256,), (300,), (17, 31), (4096,), (1, 512), (5000,), (2,)]


def _tree(seed: int) -> dict[str, jax.Array]:
  keys = jax.random.split(jax.random.key(seed), len(SHAPES))
  return {
    f"w{i:02d}": jax.random.normal(k, s) * 10.0 ** (i % 5 - 2)
    for i, (k, s) in enumerate(zip(keys, SHAPES, strict=True))
  }


def _run(tx: optax.GradientTransformation, steps: int = 3):
  params = _tree(0)
  state = tx.init(params)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  out = []
  for t in range(steps):
    updates, state = step(_tree(t + 1), state, params)
    params = optax.apply_updates(params, updates)
    out.append((updates, state))
  return out


def _ungrouped(monkeypatch: pytest.MonkeyPatch, tx: optax.GradientTransformation):
  """`tx`'s run with grouping off (every leaf updated alone)."""
  monkeypatch.setattr(_group, "SMALL", 0)
  _jit_cache._compiled.clear()
  jax.clear_caches()
  try:
    return _run(tx)
  finally:
    monkeypatch.undo()
    _jit_cache._compiled.clear()
    jax.clear_caches()


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(nu_quantization="8bit"),
    dict(centered=True, momentum=0.9, **EIGHT_BIT),
    dict(
      centered=True,
      bias_correction=True,
      nu_quantization="8bit",
      mu_quantization="8bit",
    ),
    dict(
      momentum=0.9,
      weight_decay=1e-2,
      nu_quantization="8bit",
      momentum_quantization="8bit",
    ),
  ],
  ids=["nu", "centered-momentum-all", "centered-bc", "momentum-wd"],
)
def test_grouped_equals_each_leaf_alone(monkeypatch, kwargs):
  tx = optax_rms.rmsprop(1e-2, **kwargs)
  grouped = _run(tx)
  alone = _ungrouped(monkeypatch, tx)
  moved = total = 0
  for (u1, s1), (u2, s2) in zip(grouped, alone, strict=True):
    assert jax.tree.structure(s1) == jax.tree.structure(s2)
    for a, b in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u2, s2)), strict=True):
      assert a.shape == b.shape and a.dtype == b.dtype
      a, b = np.asarray(a), np.asarray(b)
      if a.dtype == np.uint8:  # codes: one step at most, and rarely
        step = np.abs(a.astype(int) - b.astype(int))
        assert step.max(initial=0) <= 1 or (
          # a signed code crossing 0: 1 <-> 128 + 1, its sign bit flipped
          np.all((step <= 1) | ((a & 127) + (b & 127) <= 1))
        )
        moved, total = moved + int((a != b).sum()), total + a.size
      elif a.dtype == np.int32:  # the count
        np.testing.assert_array_equal(a, b)
      else:
        assert_close(a, b, SAME_MATH, a.dtype)
  assert moved <= 0.01 * total


def test_one_encoding_for_a_group():
  """12 small leaves (one group): the stochastic rounding's hash appears in
  the compiled step a few times, not 12."""
  assert 0 < _hash_count(optax_rms.rmsprop(1e-3, nu_quantization="8bit"), 12) <= 4


def _hash_count(tx: optax.GradientTransformation, n: int) -> int:
  """How often the rounding's hash multiplier is in the compiled update of
  `n` leaves of 512 elements (once per encoding, give or take XLA's copies)."""
  params = {f"b{i:02d}": jnp.ones((512,)) for i in range(n)}
  state = jax.eval_shape(tx.init, params)
  text = jax.jit(lambda g, s: tx.update(g, s)).lower(params, state).compile().as_text()
  return text.count("constant(2146121005)")  # mix32's 0x7FEB352D


def test_a_float_buffer_keeps_its_leaves_apart():
  """With a float buffer beside an 8-bit one, each leaf is updated alone (a
  group would copy the float buffer whole)."""
  mixed = optax_rms.rmsprop(1e-3, centered=True, nu_quantization="8bit")
  assert _hash_count(mixed, 6) >= 6


def test_plan_groups_by_kind_and_size():
  sizes = [10, 5000, 10, 300, 0, 10, 4096]
  kinds = ["a", "a", "b", "a", "a", None, "a"]
  groups = _group.plan(kinds, sizes)
  # "a": leaves 0, 3, 6 (1 is too big, 4 is empty); "b" and None: alone.
  assert [g.leaves for g in groups] == [(0, 3, 6)]
  assert groups[0].starts == (0, 256, 768)
  assert groups[0].size == 768 + 4096


def test_plan_bounds_a_group():
  per_group = _group.GROUP // _group.SMALL
  n = 2 * per_group + 1  # the last alone: a group of one is no group
  groups = _group.plan(["a"] * n, [_group.SMALL] * n)
  assert [len(g.leaves) for g in groups] == [per_group, per_group]
  assert all(g.size <= _group.GROUP for g in groups)
  assert [i for g in groups for i in g.leaves] == list(range(n - 1))


def test_pack_small_vectors_are_not_regrouped():
  """pack_small's flat vectors (several segments each) go through alone,
  with the numbers of the unpacked tree."""
  params = _tree(0)
  inner = optax_rms.rmsprop(1e-2, nu_quantization="8bit")
  packed = optax_rms.pack_small(inner)
  u1, _ = packed.update(_tree(1), packed.init(params), params)
  u2, _ = inner.update(_tree(1), inner.init(params), params)
  for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
