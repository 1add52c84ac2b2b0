"""Issue 14: the holes hostile input found, each with a test that failed before.

Every error must name the argument (or the state field and leaf), the value and
what is allowed; every accepted input must behave as optax does.
"""

import gc
import inspect
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify
from tolerances import SAME_MATH, assert_close

import optax_rms
from optax_rms import _jit_cache, _rmsprop, compat

F32_TINY = float(jnp.finfo(jnp.float32).smallest_normal)  # 1.175e-38
F16_TINY = float(jnp.finfo(jnp.float16).smallest_normal)  # 6.104e-05

# ------------------------------------------------ 4. eps below the smallest normal


@pytest.mark.parametrize("eps", [1e-38, 1e-45, 1e-46])
@pytest.mark.parametrize("eps_in_sqrt", [True, False])
@pytest.mark.parametrize("nu_dtype", [None, "bfloat16"])
def test_subnormal_eps_is_refused_at_construction(eps, eps_in_sqrt, nu_dtype):
  with pytest.raises(ValueError, match=r"eps=1e-\d+ is below the smallest normal "
                     r"float32 number \(1\.175e-38\)"):
    optax_rms.rmsprop(0.1, eps=eps, eps_in_sqrt=eps_in_sqrt, nu_dtype=nu_dtype)
  with pytest.raises(ValueError, match=r"eps=.*smallest normal"):
    optax_rms.scale_by_rms(eps=eps, eps_in_sqrt=eps_in_sqrt)


def test_eps_below_float16_normal_is_refused_at_init():
  """float16 state for float16 parameters: the step runs in float16, where
  eps=1e-8 rounds to 0; known only at init (the parameters' dtype)."""
  tx = optax_rms.rmsprop(0.1, nu_dtype="float16")
  tx.init(jnp.ones(3, jnp.float32))  # computes in float32: fine
  with pytest.raises(
    ValueError, match=r"eps=1e-08 is below the smallest normal float16 number "
    r"\(6\.104e-05\).*Use eps >= 6\.104e-05"
  ):
    tx.init({"w": jnp.ones(3, jnp.float16)})


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


# ---------------------------------------- 5. concrete arrays, NumPy scalars


@pytest.mark.parametrize(
  "kwargs,pattern",
  [
    (dict(eps=jnp.array(0.0)), r"eps must be a finite number > 0, got 0\.0"),
    (dict(learning_rate=jnp.array(-1.0)), r"learning_rate .*>= 0, got -1\.0"),
    (dict(learning_rate=jnp.array(jnp.nan)), r"learning_rate .*finite.*nan"),
    (dict(decay=jnp.array(1.0)), r"decay .*in \[0, 1\), got 1\.0"),
    (dict(momentum=jnp.array(1.0)), r"momentum .*in \[0, 1\), got 1\.0"),
    (dict(weight_decay=jnp.array(-1e-2)), r"weight_decay .*>= 0"),
    (dict(decay=np.float32(1.0)), r"decay .*in \[0, 1\)"),
    (dict(eps=np.float64(1e-40)), r"eps=1e-40 is below"),
    (dict(eps=jnp.array(1e-40, jnp.float32)), r"eps=.*is below"),
    (dict(momentum=jnp.array(True)), r"momentum must be a number"),
  ],
  ids=lambda x: str(x)[:40] if isinstance(x, dict) else "",
)
def test_concrete_arrays_and_numpy_scalars_are_validated(kwargs, pattern):
  with pytest.raises((ValueError, TypeError), match=pattern):
    optax_rms.rmsprop(**{"learning_rate": 0.1, **kwargs})


def test_inject_hyperparams_under_jit_is_not_read_and_does_not_retrace():
  """Under jit the hyperparameters are tracers: not read (no host sync), and
  the step is traced once."""
  traces = []
  tx = optax.inject_hyperparams(optax_rms.rmsprop)(learning_rate=0.1, momentum=0.9)
  p = jnp.ones(3)
  state = tx.init(p)

  @jax.jit
  def step(p, state):
    traces.append(1)
    u, state = tx.update(p, state, p)
    return optax.apply_updates(p, u), state

  for lr in (0.1, 0.05, 0.01):
    state.hyperparams["learning_rate"] = jnp.asarray(lr)
    p, state = step(p, state)
  assert len(traces) == 1
  # Out-of-range values set in the state are used silently inside jit (the
  # documented behaviour; check_hyperparams=True reports them, see below).
  state.hyperparams["learning_rate"] = jnp.asarray(-5.0)
  p2, _ = step(p, state)
  assert np.all(np.isfinite(p2)) and len(traces) == 1


def test_inject_hyperparams_eagerly_reads_its_values_each_step():
  """Eagerly the rebuilt optimizer gets concrete arrays: they are validated
  (a host read per step), so an out-of-range value in the state is caught."""
  tx = optax.inject_hyperparams(optax_rms.rmsprop)(learning_rate=0.1)
  p = jnp.ones(3)
  state = tx.init(p)
  _, state = tx.update(p, state, p)
  state.hyperparams["decay"] = jnp.asarray(1.5)
  with pytest.raises(ValueError, match=r"decay .*in \[0, 1\), got 1\.5"):
    tx.update(p, state, p)


# ------------------------------------------------------------ 6. state dtypes


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2", "int8", "uint8"])
@pytest.mark.parametrize("field", ["nu_dtype", "mu_dtype", "momentum_dtype"])
def test_unsupported_state_dtypes_are_refused_listing_the_allowed(field, dtype):
  with pytest.raises(
    ValueError, match=rf"{field} must be a .*dtype, one of \('float16', 'bfloat16', "
    r"'float32', 'float64'"
  ):
    optax_rms.rmsprop(0.1, centered=True, momentum=0.9, **{field: dtype})


# --------------------------------------------------------- 7. Python-float leaves


@pytest.mark.parametrize("kw", [{}, dict(centered=True, momentum=0.9)])
def test_python_float_leaves_as_optax(kw):
  ours, ref = optax_rms.rmsprop(0.1, **kw), optax.rmsprop(0.1, **kw)
  p_ours = p_ref = {"w": 3.0, "b": -1.0}
  s_ours, s_ref = ours.init(p_ours), ref.init(p_ref)
  for _ in range(5):
    g_ours = jax.tree.map(lambda x: 2 * x, p_ours)
    g_ref = jax.tree.map(lambda x: 2 * x, p_ref)
    u_ours, s_ours = ours.update(g_ours, s_ours, p_ours)
    u_ref, s_ref = ref.update(g_ref, s_ref, p_ref)
    p_ours = optax.apply_updates(p_ours, u_ours)
    p_ref = optax.apply_updates(p_ref, u_ref)
  for k in p_ref:
    assert np.asarray(p_ours[k]).dtype == np.asarray(p_ref[k]).dtype == np.float32
    # Eager optax runs op by op, ours as one compiled step: see README's
    # "same numbers" (bit for bit when both are jitted).
    assert_close(p_ours[k], p_ref[k], SAME_MATH, jnp.float32, err_msg=k)


# ---------------------------------------------- 8, 11. what is passed as state


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


# ----------------------------------------------- 9. errors that name the leaf


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


# --------------------------------------------------------- 10. state dtype drift


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


# ------------------------------------------------------------- 12. annotations


def _public_functions():
  for module, names in ((optax_rms, optax_rms.__all__), (compat, compat.__all__)):
    for name in names:
      obj = getattr(module, name)
      if inspect.isfunction(obj):
        yield f"{module.__name__}.{name}", obj


@pytest.mark.parametrize("name,fn", list(_public_functions()), ids=lambda x: str(x))
def test_public_annotations_are_objects_not_strings(name, fn):
  sig = inspect.signature(fn)
  for p in sig.parameters.values():
    assert not isinstance(p.annotation, str), (name, p.name, p.annotation)
  assert not isinstance(sig.return_annotation, str), name


@pytest.mark.parametrize(
  "fn", [optax_rms.rmsprop, compat.keras, compat.tf1, compat.timm, compat.mxnet]
)
def test_optax_tooling_sees_that_the_learning_rate_takes_schedules(fn):
  """optax's own contract tests (optax/contrib/_common_test.py,
  optax/schedules/_schedule_test.py) skip the schedule test of an optimizer
  whose learning_rate annotation is not one of these objects."""
  params = inspect.signature(fn).parameters
  lr = params.get("learning_rate", params.get("lr"))
  assert lr is not None
  assert lr.annotation in (optax.ScalarOrSchedule, optax.Schedule)


# ------------------------------------------------------- 13. bounded eager cache


def test_learning_rate_sweep_does_not_grow_the_cache_unboundedly(monkeypatch):
  monkeypatch.setattr(_jit_cache, "CACHE_SIZE", 3)
  monkeypatch.setattr(_jit_cache, "_compiled", type(_jit_cache._compiled)())

  class Schedule:  # a schedule object, held by the cache key while cached
    def __call__(self, count):
      return 0.1

  schedule = Schedule()
  held = weakref.ref(schedule)
  p = jnp.ones(())
  tx = optax_rms.rmsprop(schedule)
  tx.update(p, tx.init(p))
  del tx, schedule
  for i in range(8):
    tx = optax_rms.rmsprop(0.01 * (i + 1))
    tx.update(p, tx.init(p))
    assert _rmsprop._cache_size() <= 3
  gc.collect()
  assert held() is None  # the evicted step no longer holds the schedule
  # A configuration still cached is reused: no new entry, same function.
  fn = _jit_cache._compiled[next(reversed(_jit_cache._compiled))]
  tx.update(p, tx.init(p))
  assert _jit_cache._compiled[next(reversed(_jit_cache._compiled))] is fn
  assert fn._cache_size() == 1


# ------------------------------------- documented but surprising: run-time check


def test_check_hyperparams_names_the_hyperparameter_and_the_step():
  tx = optax_rms.rmsprop(lambda t: 0.1 - 0.05 * t, check_hyperparams=True)
  p = jnp.ones(3)
  state = tx.init(p)
  step = jax.jit(checkify.checkify(tx.update))
  for t in range(4):
    err, (_, state) = step(p, state)
    if t < 3:
      assert err.get() is None
  with pytest.raises(
    checkify.JaxRuntimeError, match=r"learning_rate must be a finite number >= 0, "
    r"got -0\.05.* at step 3"
  ):
    err.throw()


def test_check_hyperparams_reports_inject_hyperparams_state():
  tx = optax.inject_hyperparams(optax_rms.rmsprop)(0.1, check_hyperparams=True)
  p = jnp.ones(3)
  state = tx.init(p)
  state.hyperparams["decay"] = jnp.asarray(1.5)
  err, _ = jax.jit(checkify.checkify(tx.update))(p, state)
  with pytest.raises(checkify.JaxRuntimeError, match=r"decay .*in \[0, 1\), got 1\.5"):
    err.throw()


def test_check_hyperparams_is_off_by_default_and_needs_checkify_when_on():
  """Off (the default), the step holds no check: it runs under plain jit, where
  a checkify.check that was not functionalized would raise at trace time."""
  p = jnp.ones(3)
  sched = optax.linear_schedule(0.1, 0.0, 10)
  off = optax_rms.rmsprop(sched)
  jax.jit(off.update)(p, off.init(p))
  on = optax_rms.rmsprop(sched, check_hyperparams=True)
  with pytest.raises(ValueError, match="checkify"):
    jax.jit(on.update)(p, on.init(p))


# ------------------------------------------- README's "same numbers", exactly


@pytest.mark.parametrize(
  "kw",
  [
    dict(),
    dict(centered=True, momentum=0.9, nesterov=True),
    dict(bias_correction=True, eps_in_sqrt=False, initial_scale=1.0, momentum=0.9),
    dict(centered=True, bias_correction=True, initial_scale=1.0),
  ],
  ids=["plain", "centered-nesterov", "bc-eps_out-momentum", "centered-bc"],
)
def test_jitted_steps_equal_optax_bit_for_bit(kw):
  """What README's "bit for bit" promises: each step jitted (jax.jit of
  update, as in a training loop), 50 steps on float32 parameters, the same
  bits as optax.rmsprop's jitted step. Eager, optax runs op by op while ours
  is one compiled program, so there the two agree to float32 rounding
  (test_rmsprop.py::test_matches_optax_rmsprop)."""
  key = jax.random.PRNGKey(0)
  p_ours = p_ref = {"a": jax.random.normal(key, (4, 5)), "b": jnp.ones(3)}
  ours, ref = optax_rms.rmsprop(0.02, **kw), optax.rmsprop(0.02, **kw)
  s_ours, s_ref = ours.init(p_ours), ref.init(p_ref)
  step_ours, step_ref = jax.jit(ours.update), jax.jit(ref.update)
  for t in range(50):
    key_t = jax.random.fold_in(key, t)
    noise = jax.tree.map(lambda p, k=key_t: jax.random.normal(k, p.shape), p_ref)
    u, s_ours = step_ours(jax.tree.map(jnp.add, p_ours, noise), s_ours, p_ours)
    v, s_ref = step_ref(jax.tree.map(jnp.add, p_ref, noise), s_ref, p_ref)
    p_ours, p_ref = optax.apply_updates(p_ours, u), optax.apply_updates(p_ref, v)
  for k in p_ref:
    np.testing.assert_array_equal(np.asarray(p_ours[k]), np.asarray(p_ref[k]), k)
