"""RMSPropState as data: pytree round trips, pickle, its size, its errors
(orbax round trips: test_contract.py, for every transformation and storage form)."""

import pickle

import helpers
import jax
import jax.numpy as jnp
import optax
import pytest

import optax_rms

# variant name -> (kwargs, number of per-parameter trees besides nu). 8-bit
# buffers: codes shaped like the parameters, plus a per-block scale tree each.
V, S = helpers.VARIANTS, helpers.STORAGE
VARIANTS = {
  "plain": (V["plain"], 0),
  "centered": (V["centered"], 1),
  "momentum": (V["momentum"], 1),
  "centered-nesterov": (V["centered-nesterov"], 2),
  "8bit-nu": (S["8bit_nu"], 1),
  "8bit-all": ({**V["centered-nesterov"], **S["8bit_all"]}, 5),
}
variants = pytest.mark.parametrize(
  "kwargs, extra_trees", list(VARIANTS.values()), ids=list(VARIANTS.keys())
)

LR = 0.05


def _params():
  kw, kb, kc = jax.random.split(jax.random.PRNGKey(0), 3)
  return {
    "dense": {
      "w": jax.random.normal(kw, (3, 4)),
      "b": jax.random.normal(kb, (4,)),
    },
    "scale": jax.random.normal(kc, ()),
  }


def _grads(params, t):
  key = jax.random.fold_in(jax.random.PRNGKey(1), t)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
    treedef,
    [jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)],
  )


def _steps(tx, params, state, ts):
  """Runs tx on the gradients of steps ts; returns params, state."""
  update = jax.jit(tx.update)
  for t in ts:
    updates, state = update(_grads(params, t), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _trained(kwargs, n=3):
  tx = optax_rms.rmsprop(LR, **kwargs)
  params = _params()
  params, state = _steps(tx, params, tx.init(params), range(n))
  return tx, params, state


@variants
def test_state_holds_one_array_per_parameter_per_buffer(kwargs, extra_trees):
  params = _params()
  state = optax_rms.rmsprop(LR, **kwargs).init(params)
  n = len(jax.tree.leaves(params))
  assert len(jax.tree.leaves(state)) == (1 + extra_trees) * n + 1
  assert isinstance(state, optax_rms.RMSPropState)
  assert state.count.shape == () and state.count.dtype == jnp.int32
  assert jax.tree.structure(state.nu) == jax.tree.structure(params)
  assert (state.mu is None) == (not kwargs.get("centered", False))
  assert (state.momentum is None) == (kwargs.get("momentum") is None)
  for tree in (state.mu, state.momentum):
    if tree is not None:
      assert jax.tree.structure(tree) == jax.tree.structure(params)


def test_plain_state_is_one_array_per_parameter_plus_count():
  params = _params()
  state = optax_rms.rmsprop(LR).init(params)
  assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(params)) + 1


@variants
def test_tree_flatten_unflatten_round_trip(kwargs, extra_trees):
  del extra_trees
  _, _, state = _trained(kwargs)
  leaves, treedef = jax.tree_util.tree_flatten(state)
  rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
  assert isinstance(rebuilt, optax_rms.RMSPropState)
  assert rebuilt._fields == state._fields
  helpers.assert_trees_equal(rebuilt, state)
  # None fields stay None (not an empty tuple or a leaf).
  assert (rebuilt.mu is None) == (state.mu is None)
  assert (rebuilt.momentum is None) == (state.momentum is None)


@variants
def test_pickle_round_trip_then_identical_training(kwargs, extra_trees):
  del extra_trees
  tx, params, state = _trained(kwargs)
  restored = pickle.loads(pickle.dumps(state))
  assert isinstance(restored, optax_rms.RMSPropState)
  helpers.assert_trees_equal(restored, state)

  p_a, s_a = _steps(tx, params, state, range(3, 6))
  p_b, s_b = _steps(tx, params, restored, range(3, 6))
  helpers.assert_trees_equal(p_b, p_a)
  helpers.assert_trees_equal(s_b, s_a)
  assert int(s_b.count) == 6


def _drop_key(grads):
  return {**grads, "dense": {"w": grads["dense"]["w"]}}


def _add_key(grads):
  return {**grads, "extra": jnp.zeros(2)}


def _as_list(grads):
  return [grads["dense"], grads["scale"]]


@pytest.mark.parametrize("change", [_drop_key, _add_key, _as_list])
def test_gradient_tree_unlike_state_raises_with_both_structures(change):
  params = _params()
  tx = optax_rms.rmsprop(LR, centered=True, momentum=0.9)
  state = tx.init(params)
  grads = change(_grads(params, 0))
  with pytest.raises(ValueError) as excinfo:
    tx.update(grads, state, params)
  message = str(excinfo.value)
  assert str(jax.tree.structure(grads)) in message
  assert str(jax.tree.structure(state.nu)) in message
  with pytest.raises(ValueError):
    jax.jit(tx.update)(grads, state, params)
