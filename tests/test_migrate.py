"""optax_rms.from_optax_rmsprop_state: switching from optax.rmsprop mid-run.

Every optax.rmsprop variant (optax 0.2.8: plain, centered, momentum, Nesterov,
bias correction; a constant learning rate or a schedule, whose
ScaleByScheduleState has its own count; eps inside or outside the square root;
initial_scale 0 or 1): run optax for a few steps, convert its state, then
continue both optax.rmsprop from its own state and optax_rms.rmsprop (same
arguments) from the converted one. The updates must be the same bit for bit:
both jitted, the two programs are the same IEEE operations in the same order
(tests/test_rmsprop.py checks the same of the step itself).
"""

import itertools

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import optax_rms

STEPS_BEFORE, STEPS_AFTER = 3, 4

VARIANTS = helpers.pick(
  "plain",
  "centered",
  "momentum",
  "nesterov",
  "bias_correction",
  "centered-momentum-bias_correction",
)
LEARNING_RATES = {
  "constant": 0.01,
  "schedule": optax.linear_schedule(0.02, 0.001, transition_steps=5),
}


def _params(dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 2)
  return {
    "w": jax.random.normal(keys[0], (4, 3)).astype(dtype),
    "b": jax.random.normal(keys[1], (3,)).astype(dtype),
  }


def _grads(step, params):
  """A fixed, step-dependent gradient sequence (not a pure function of params)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.fold_in(jax.random.key(1), step), len(leaves))
  return jax.tree.unflatten(
    treedef,
    [
      (jax.random.normal(k, p.shape) + p.astype(jnp.float32)).astype(p.dtype)
      for k, p in zip(keys, leaves, strict=True)
    ],
  )


def _run(update, state, params, steps, first_step):
  """`steps` calls of the jitted `update`; returns the updates, state, params."""
  updates = []
  for step in range(first_step, first_step + steps):
    u, state = update(_grads(step, params), state, params)
    updates.append(u)
    params = optax.apply_updates(params, u)
  return updates, state, params


def _assert_same_updates(ours, theirs, context):
  assert len(ours) == len(theirs) == STEPS_AFTER
  for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      assert x.dtype == y.dtype, context
      np.testing.assert_array_equal(
        np.asarray(x), np.asarray(y), err_msg=f"{context}, step {step}"
      )


def _switch_and_compare(kwargs, lr, params, convert=lambda s: s):
  """optax for STEPS_BEFORE steps, then both for STEPS_AFTER from that state."""
  theirs_tx = optax.rmsprop(lr, **kwargs)
  ours_tx = optax_rms.rmsprop(lr, **kwargs)
  theirs_update = jax.jit(theirs_tx.update)
  _, optax_state, params = _run(
    theirs_update, theirs_tx.init(params), params, STEPS_BEFORE, 0
  )
  converted = optax_rms.from_optax_rmsprop_state(convert(optax_state))
  assert isinstance(converted, optax_rms.RMSPropState)
  # The converted state is the one optax_rms.rmsprop would have had.
  like = ours_tx.init(params)
  assert jax.tree.structure(converted) == jax.tree.structure(like)
  # optax counts steps only for a schedule or bias correction; else 0.
  has_count = callable(lr) or kwargs.get("bias_correction", False)
  assert int(converted.count) == (STEPS_BEFORE if has_count else 0)
  theirs, *_ = _run(theirs_update, optax_state, params, STEPS_AFTER, STEPS_BEFORE)
  ours, *_ = _run(jax.jit(ours_tx.update), converted, params, STEPS_AFTER, STEPS_BEFORE)
  return ours, theirs


def _cases():
  """Every variant with each learning rate; eps_in_sqrt both ways per variant
  and per learning rate, initial_scale 0 and 1 on alternate variants (the full
  product is 4x the compile time and covers no other code path: the two flags
  only change the per-element formula, which tests/test_rmsprop.py crosses)."""
  for i, (variant, lr_name) in enumerate(itertools.product(VARIANTS, LEARNING_RATES)):
    yield variant, lr_name, (i + i // 2) % 2 == 0, 1.0 if (i // 2) % 2 else 0.0


CASES = list(_cases())
assert {c[2] for c in CASES if c[0] == "plain"} == {True, False}
assert {c[3] for c in CASES} == {0.0, 1.0}


@pytest.mark.parametrize("variant, lr_name, eps_in_sqrt, initial_scale", CASES)
def test_converted_state_continues_as_optax(
  variant, lr_name, eps_in_sqrt, initial_scale
):
  kwargs = {
    **VARIANTS[variant],
    "eps_in_sqrt": eps_in_sqrt,
    "initial_scale": initial_scale,
  }
  ours, theirs = _switch_and_compare(kwargs, LEARNING_RATES[lr_name], _params())
  _assert_same_updates(ours, theirs, (variant, lr_name, eps_in_sqrt, initial_scale))


def test_bfloat16_buffers_keep_their_dtype_and_continue_as_optax():
  """optax keeps bfloat16 statistics for bfloat16 params, as optax_rms does."""
  ours, theirs = _switch_and_compare(
    VARIANTS["centered-momentum-bias_correction"],
    LEARNING_RATES["schedule"],
    _params(jnp.bfloat16),
  )
  _assert_same_updates(ours, theirs, "bfloat16")


def test_the_count_comes_from_optax_or_the_argument():
  params = _params()
  grads = _grads(0, params)
  # A schedule's count and the bias-correction count: both advance.
  tx = optax.rmsprop(LEARNING_RATES["schedule"], bias_correction=True)
  state = tx.init(params)
  for _ in range(2):
    _, state = tx.update(grads, state)
  assert int(optax_rms.from_optax_rmsprop_state(state).count) == 2
  assert int(optax_rms.from_optax_rmsprop_state(state, count=2).count) == 2
  with pytest.raises(ValueError, match=r"step counts disagree.*count = 5"):
    optax_rms.from_optax_rmsprop_state(state, count=5)
  tampered = (state[0]._replace(count=jnp.asarray(7, jnp.int32)), *state[1:])
  with pytest.raises(ValueError, match="step counts disagree"):
    optax_rms.from_optax_rmsprop_state(tampered)
  # Constant lr, no bias correction: optax keeps no count; the argument's, or 0.
  tx = optax.rmsprop(0.1)
  state = tx.init(params)
  assert int(optax_rms.from_optax_rmsprop_state(state).count) == 0
  converted = optax_rms.from_optax_rmsprop_state(state, count=40)
  assert int(converted.count) == 40
  assert converted.count.dtype == jnp.int32
  with pytest.raises(ValueError, match="integer scalar"):
    optax_rms.from_optax_rmsprop_state(state, count=1.5)


def test_unrecognised_states_are_refused_naming_what_was_passed():
  params = _params()
  with pytest.raises(ValueError, match=r"got a tuple of length 2.*optax\.rmsprop"):
    optax_rms.from_optax_rmsprop_state(optax.adam(0.1).init(params))
  with pytest.raises(ValueError, match="ScaleByAdamState"):
    state = optax.chain(
      optax.scale_by_adam(), optax.scale_by_learning_rate(0.1), optax.identity()
    ).init(params)
    optax_rms.from_optax_rmsprop_state(state)
  with pytest.raises(ValueError, match="got a RMSPropState"):
    optax_rms.from_optax_rmsprop_state(optax_rms.rmsprop(0.1).init(params))
  wrapped = optax.inject_hyperparams(optax.rmsprop)(learning_rate=0.1).init(params)
  with pytest.raises(ValueError, match=r"pass its \.inner_state"):
    optax_rms.from_optax_rmsprop_state(wrapped)
  # The inner state converts (the wrapper's own hyperparameters do not).
  assert optax_rms.from_optax_rmsprop_state(wrapped.inner_state).mu is None
  with pytest.raises(ValueError, match=r"fields \['nu', 'trace'\]"):
    optax_rms.from_optax_rmsprop_state([{"nu": 1, "trace": 2}, None, None])


@pytest.mark.parametrize("target", ["optax_init", "none"])
def test_round_trip_through_an_orbax_checkpoint_made_by_optax(tmp_path, target):
  """Save optax's state with orbax, restore it as saved, convert, continue.

  Restored with optax's own ``init`` as the target (the typed states), or
  without a target (orbax then gives a list of dicts, None for EmptyState).
  """
  params = _params()
  kwargs = VARIANTS["centered-momentum-bias_correction"]
  lr = LEARNING_RATES["schedule"]
  theirs_tx = optax.rmsprop(lr, **kwargs)
  theirs_update = jax.jit(theirs_tx.update)
  _, optax_state, params = _run(
    theirs_update, theirs_tx.init(params), params, STEPS_BEFORE, 0
  )
  path = (tmp_path / "optax_state").absolute()
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, optax_state)
    checkpointer.wait_until_finished()
    if target == "optax_init":
      abstract = jax.tree.map(
        ocp.utils.to_shape_dtype_struct, theirs_tx.init(_params())
      )
      restored = checkpointer.restore(path, abstract)
      assert type(restored[0]) is type(optax_state[0])
    else:
      restored = checkpointer.restore(path)
      assert isinstance(restored[0], dict) and restored[2].keys() == {"trace"}
  converted = optax_rms.from_optax_rmsprop_state(restored)
  theirs, *_ = _run(theirs_update, optax_state, params, STEPS_AFTER, STEPS_BEFORE)
  ours_update = jax.jit(optax_rms.rmsprop(lr, **kwargs).update)
  ours, *_ = _run(ours_update, converted, params, STEPS_AFTER, STEPS_BEFORE)
  _assert_same_updates(ours, theirs, f"restored with target {target}")


@pytest.mark.parametrize(
  "count, error",
  [
    (-5, ValueError),  # once accepted: a negative step count
    (2**31, ValueError),  # once an OverflowError (int32)
    (2**40, ValueError),
    (np.int64(2**31), ValueError),
    (True, ValueError),  # not an integer scalar (a bool)
  ],
  ids=["negative", "int32-max+1", "2**40", "numpy-int64", "bool"],
)
def test_the_count_argument_is_checked_with_its_range(count, error):
  state = optax.rmsprop(0.1).init(_params())
  with pytest.raises(error, match=r"count"):
    optax_rms.from_optax_rmsprop_state(state, count=count)
  if not isinstance(count, bool):
    with pytest.raises(error, match=r"count must be an int in \[0, 2\*\*31 - 1\]"):
      optax_rms.from_optax_rmsprop_state(state, count=count)
  top = optax_rms.from_optax_rmsprop_state(state, count=2**31 - 1)
  assert int(top.count) == 2**31 - 1 and top.count.dtype == jnp.int32
