"""update refuses a state or gradients it cannot use, eagerly and under jit,
with an error naming the field, the leaf, the dtypes and the way out: another
optimizer's state, a raw checkpoint, another configuration's buffers, other
shapes or dtypes, integer gradients, weight decay's params of another tree."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rms


@pytest.mark.parametrize(
  "make",
  [
    lambda p: optax.adam(0.1).init(p),
    lambda p: optax.rmsprop(0.1).init(p),
    lambda p: optax.sgd(0.1).init(p),
    lambda p: None,
  ],
  ids=["adam", "optax_rmsprop", "sgd", "None"],
)
def test_another_optimizers_state_is_named(make):
  p = {"w": jnp.ones(3)}
  with pytest.raises(TypeError, match=r"expected an optax_rms\.RMSPropState .*got "):
    optax_rms.rmsprop(0.1).update(p, make(p))


def test_raw_orbax_restore_says_how_to_restore(tmp_path):
  """The recipe of docs/numerics.md ("Checkpoints"): restore with the target
  from tx.init, or rebuild a raw restore with RMSPropState(**d)."""
  import orbax.checkpoint as ocp

  tx = optax_rms.rmsprop(0.1, momentum=0.9, centered=True)
  params = {"w": jnp.arange(3.0), "b": jnp.ones(())}
  state = tx.init(params)
  for _ in range(2):
    _, state = tx.update(params, state, params)
  path = tmp_path / "opt_state"
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, state)
    ckptr.wait_until_finished()
    raw = ckptr.restore(path)  # no target: a dict
    target = ckptr.restore(path, jax.eval_shape(tx.init, params))
  assert isinstance(raw, dict)
  with pytest.raises(
    TypeError,
    match=r"got a dict with keys \['count', .*\].*eval_shape\(tx\.init, params\)"
    r".*RMSPropState\(\*\*restored\)",
  ):
    tx.update(params, raw, params)
  rebuilt = optax_rms.RMSPropState(**raw)
  want, _ = tx.update(params, state, params)
  for restored in (target, rebuilt):
    got, _ = tx.update(params, restored, params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_integer_gradients_name_the_leaf():
  tx = optax_rms.rmsprop(0.1)
  state = tx.init({"w": jnp.ones(3), "b": jnp.ones(2)})
  with pytest.raises(TypeError, match=r"gradient \['b'\] has dtype int32"):
    tx.update({"w": jnp.ones(3), "b": jnp.ones(2, jnp.int32)}, state)


def test_integer_nu_names_the_field_and_leaf():
  tx = optax_rms.rmsprop(0.1)
  p = {"w": jnp.ones(3)}
  state = tx.init(p)._replace(nu={"w": jnp.ones(3, jnp.int32)})
  with pytest.raises(TypeError, match=r"state\.nu\['w'\] has dtype int32.*float32"):
    tx.update(p, state)


def test_float_count_is_refused():
  tx = optax_rms.rmsprop(0.1)
  p = {"w": jnp.ones(3)}
  state = tx.init(p)._replace(count=jnp.zeros((), jnp.float32))
  with pytest.raises(TypeError, match=r"state\.count must be an int32 scalar.*float32"):
    tx.update(p, state)
  with pytest.raises(TypeError, match=r"state\.count"):
    jax.jit(tx.update)(p, state)


@pytest.mark.parametrize(
  "params,pattern",
  [
    ({"v": jnp.ones(3)}, r"weight_decay needs params with the gradients' tree"),
    ({"w": jnp.ones(4)}, r"weight_decay: params\['w'\] has shape \(4,\).*\(3,\)"),
  ],
  ids=["other_tree", "other_shape"],
)
def test_weight_decay_params_of_another_tree_or_shape(params, pattern):
  tx = optax_rms.rmsprop(0.1, weight_decay=1e-2)
  g = {"w": jnp.ones(3)}
  with pytest.raises(ValueError, match=pattern):
    tx.update(g, tx.init(g), params)


@pytest.mark.parametrize(
  "saved,loaded,field",
  [
    (dict(nu_dtype="bfloat16"), {}, "nu"),
    ({}, dict(nu_dtype="bfloat16"), "nu"),
    (dict(momentum_dtype="bfloat16"), {}, "momentum"),
    (dict(mu_dtype="float32"), dict(mu_dtype="bfloat16"), "mu"),
  ],
  ids=["bf16_into_f32", "f32_into_bf16", "momentum", "mu"],
)
def test_state_dtype_drift_is_an_error_naming_field_leaf_and_dtypes(
  saved, loaded, field
):
  kw = dict(centered=True, momentum=0.9)
  params = {"layer": {"w": jnp.ones((2, 3))}}
  state = optax_rms.rmsprop(0.1, **kw, **saved).init(params)
  tx = optax_rms.rmsprop(0.1, **kw, **loaded)
  stored = jax.tree.leaves(getattr(state, field))[0].dtype
  wanted = jax.tree.leaves(getattr(tx.init(params), field))[0].dtype
  with pytest.raises(
    TypeError,
    match=rf"state\.{field}\['layer'\]\['w'\] has dtype {stored}, but this "
    rf"optimizer keeps it in {wanted}.*{field}_dtype='{stored}'",
  ):
    tx.update(params, state, params)
  # The cast the message gives works, and the dtypes are then the optimizer's.
  fresh = tx.init(params)
  cast = jax.tree.map(lambda x, t: x.astype(t.dtype), state, fresh)
  _, new = tx.update(params, cast, params)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(fresh), strict=True):
    assert a.dtype == b.dtype


@pytest.mark.parametrize(
  "made_with,used_with,pattern",
  [
    (dict(), dict(centered=True), r"no 'mu' buffer.*without centered=True"),
    (dict(centered=True), dict(), r"has a 'mu' buffer.*with centered=True"),
    (dict(), dict(momentum=0.9), r"no 'momentum' buffer.*without momentum"),
    (dict(momentum=0.9), dict(), r"has a 'momentum' buffer"),
  ],
)
def test_state_from_another_configuration_is_named(made_with, used_with, pattern):
  p = {"w": jnp.ones((2, 3))}
  state = optax_rms.rmsprop(0.1, **made_with).init(p)
  tx = optax_rms.rmsprop(0.1, **used_with)
  with pytest.raises(ValueError, match=pattern):
    tx.update(p, state)
  with pytest.raises(ValueError, match=pattern):
    jax.jit(tx.update)(p, state)


def test_state_from_other_shapes_names_the_leaf():
  tx = optax_rms.rmsprop(0.1, momentum=0.9)
  state = tx.init({"w": jnp.ones((2, 3)), "b": jnp.ones(3)})
  grads = {"w": jnp.ones((3, 2)), "b": jnp.ones(3)}
  with pytest.raises(
    ValueError,
    match=r"state\.nu\['w'\] has shape \(2, 3\) but its "
    r"gradient has shape \(3, 2\)",
  ):
    tx.update(grads, state)


def test_state_checks_run_after_earlier_calls_compiled_the_update():
  # The tree and shape checks run while the update is traced (once per
  # signature, so eager calls skip them): a mismatch after good calls is a
  # new signature, traced and caught, eager or jitted.
  tx = optax_rms.rmsprop(0.1, centered=True)
  params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
  state = tx.init(params)
  for update in (tx.update, jax.jit(tx.update)):
    for _ in range(2):
      update(params, state)
    swapped = {"w": jnp.ones((3, 2)), "b": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"state\.nu\['w'\] has shape \(2, 3\)"):
      update(swapped, state)
    with pytest.raises(ValueError, match="gradient tree does not match"):
      update({"w": params["w"]}, state)
    update(params, state)  # the good signature still runs


def test_orbax_restore_of_another_configuration_is_named(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  p = {"w": jnp.ones((2, 3))}
  centered = optax_rms.rmsprop(0.1, centered=True)
  state = centered.init(p)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "state", state)
  with ocp.StandardCheckpointer() as ckpt:
    restored = ckpt.restore(tmp_path / "state")  # no target: whatever was saved
  # Rebuild the NamedTuple from the saved fields, as a user would.
  state_like = (
    optax_rms.RMSPropState(**restored)
    if isinstance(restored, dict)
    else (optax_rms.RMSPropState(*restored))
  )
  with pytest.raises(ValueError, match=r"has a 'mu' buffer"):
    optax_rms.rmsprop(0.1).update(p, state_like)
