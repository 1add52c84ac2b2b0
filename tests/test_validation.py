"""Bad input fails at construction time with a message naming the argument."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rms

BAD_VALUES = [
  # (kwargs, exception, message pattern: the argument and the allowed range)
  (
    dict(learning_rate=-0.1),
    ValueError,
    r"learning_rate must be a finite number >= 0, got -0\.1",
  ),
  (dict(learning_rate=float("nan")), ValueError, r"learning_rate .*finite"),
  (dict(learning_rate=float("inf")), ValueError, r"learning_rate .*finite"),
  (dict(learning_rate=lambda step: -1.0), ValueError, r"learning_rate \(schedule"),
  (
    dict(learning_rate=lambda step: jnp.ones(3)),
    ValueError,
    r"schedule must return a scalar",
  ),
  (dict(learning_rate="0.1"), TypeError, r"learning_rate must be a number.*str"),
  (dict(learning_rate=[0.1, 0.2]), TypeError, r"learning_rate must be a number.*list"),
  (
    dict(learning_rate=np.array([0.1, 0.2])),
    ValueError,
    r"learning_rate must be a scalar",
  ),
  (
    dict(learning_rate=jnp.array([0.1, 0.2])),
    ValueError,
    r"learning_rate must be a scalar",
  ),
  (dict(decay=1.0), ValueError, r"decay .*\[0, 1\)"),
  (dict(decay=-0.1), ValueError, r"decay .*\[0, 1\)"),
  (dict(decay=float("nan")), ValueError, r"decay .*\[0, 1\)"),
  (dict(eps=-1e-8), ValueError, r"eps must be a finite number > 0"),
  (dict(eps=0.0), ValueError, r"eps must be a finite number > 0"),
  (dict(eps=0.0, eps_in_sqrt=False), ValueError, r"eps must be a finite number > 0"),
  (dict(initial_scale=-1.0), ValueError, r"initial_scale must be a finite number >= 0"),
  (dict(momentum=1.0), ValueError, r"momentum .*\[0, 1\)"),
  (dict(momentum=-0.5), ValueError, r"momentum .*\[0, 1\)"),
  (dict(nesterov=True), ValueError, r"nesterov=True needs momentum"),
  (dict(centered="yes"), TypeError, r"centered must be a bool"),
  (dict(eps_in_sqrt=1), TypeError, r"eps_in_sqrt must be a bool"),
  (dict(weight_decay=-1e-4), ValueError, r"weight_decay must be a finite number >= 0"),
  (
    dict(weight_decay=1e-4, weight_decay_mode="adamw"),
    ValueError,
    r"weight_decay_mode must be one of \('coupled', 'decoupled'\)",
  ),
  (dict(maximize=None), TypeError, r"maximize must be a bool"),
  (dict(lr_in_momentum="after"), TypeError, r"lr_in_momentum must be a bool"),
  (dict(nu_dtype="flaot32"), ValueError, r"nu_dtype must be a dtype"),
  (dict(nu_dtype=jnp.int8), ValueError, r"nu_dtype must be a floating dtype"),
  (dict(nu_dtype=jnp.complex64), ValueError, r"nu_dtype must be a floating dtype"),
  (dict(mu_dtype="int32"), ValueError, r"mu_dtype must be a floating or complex"),
  (dict(momentum_dtype=jnp.asarray(0.0)), ValueError, r"momentum_dtype .*static_args"),
]


def _case_id(kwargs: dict) -> str:
  """A test id that is the same in every process (pytest-xdist compares the
  workers' collections): a function's repr holds its address, so a schedule
  is named by what it returns."""
  return ",".join(
    f"{k}=schedule->{v(0)!r}" if inspect.isfunction(v) else f"{k}={v!r}"
    for k, v in kwargs.items()
  )[:60]


@pytest.mark.parametrize(
  "kwargs,error,pattern", BAD_VALUES, ids=[_case_id(b[0]) for b in BAD_VALUES]
)
def test_bad_hyperparameters_raise_at_construction(kwargs, error, pattern):
  kwargs = {"learning_rate": 0.1, **kwargs}
  with pytest.raises(error, match=pattern):
    optax_rms.rmsprop(**kwargs)


def test_unknown_option_is_refused():
  with pytest.raises(TypeError, match="unexpected keyword argument 'nestrov'"):
    optax_rms.rmsprop(0.1, momentum=0.9, nestrov=True)


@pytest.mark.parametrize(
  "kwargs,pattern",
  [
    (dict(decay=1.5), r"decay"),
    (dict(eps=-1.0), r"eps"),
    (dict(initial_scale=-1.0), r"initial_scale"),
    (dict(centered=1), r"centered"),
    (dict(nu_dtype="int8"), r"nu_dtype"),
  ],
)
def test_scale_by_rms_validates_too(kwargs, pattern):
  with pytest.raises((ValueError, TypeError), match=pattern):
    optax_rms.scale_by_rms(**kwargs)


def test_boundaries_are_accepted():
  for kw in (
    dict(learning_rate=0.0),
    dict(decay=0.0),
    dict(momentum=0.0, nesterov=True),
    dict(initial_scale=0.0),
    dict(eps=1e-30),
    dict(weight_decay=0),
    dict(learning_rate=np.float32(0.1), decay=np.float64(0.5)),
    dict(centered=np.bool_(True)),
    dict(nu_dtype=np.dtype("float32"), mu_dtype="bfloat16"),
  ):
    optax_rms.rmsprop(**{"learning_rate": 0.1, **kw})


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


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2", "int8", "uint8"])
@pytest.mark.parametrize("field", ["nu_dtype", "mu_dtype", "momentum_dtype"])
def test_unsupported_state_dtypes_are_refused_listing_the_allowed(field, dtype):
  with pytest.raises(
    ValueError, match=rf"{field} must be a .*dtype, one of \('float16', 'bfloat16', "
    r"'float32', 'float64'"
  ):
    optax_rms.rmsprop(0.1, centered=True, momentum=0.9, **{field: dtype})


def test_traced_hyperparameters_are_not_read():
  """Inside jit (as inject_hyperparams passes them) values are tracers: no
  check can read them, and none must force a host sync."""

  @jax.jit
  def step(lr, decay, momentum, g):
    tx = optax_rms.rmsprop(lr, decay=decay, momentum=momentum)
    u, _ = tx.update(g, tx.init(g))
    return u

  u = step(0.1, 0.9, 0.5, jnp.ones(3))
  assert u.shape == (3,)


def test_integer_params_are_refused_with_the_leaf_named():
  tx = optax_rms.rmsprop(0.1)
  with pytest.raises(TypeError, match=r"\['steps'\] has dtype int32"):
    tx.init({"w": jnp.ones(2), "steps": jnp.zeros((), jnp.int32)})


def test_mismatched_gradient_tree_names_both_structures():
  tx = optax_rms.rmsprop(0.1)
  state = tx.init({"a": jnp.ones(2), "b": jnp.ones(3)})
  with pytest.raises(
    ValueError,
    match=r"(?s)gradients: PyTreeDef\(\{'a': \*\}\).*"
    r"state: +PyTreeDef\(\{'a': \*, 'b': \*\}\)",
  ):
    tx.update({"a": jnp.ones(2)}, state)


def test_weight_decay_without_params_is_a_clear_error():
  tx = optax_rms.rmsprop(0.1, weight_decay=1e-2)
  g = jnp.ones(2)
  with pytest.raises(ValueError, match=r"weight_decay needs the parameters"):
    tx.update(g, tx.init(g))


def test_bad_weight_decay_mask_leaf():
  tx = optax_rms.rmsprop(0.1, weight_decay=1e-2, weight_decay_mask={"w": "yes"})
  p = {"w": jnp.ones(2)}
  with pytest.raises(TypeError, match="weight_decay_mask leaves must be Python bools"):
    tx.update(p, tx.init(p), p)


def test_nesterov_without_momentum_differs_from_optax_deliberately():
  """optax.rmsprop silently ignores nesterov=True when momentum is None; we
  refuse it, since the user asked for something that would not happen."""
  optax.rmsprop(0.1, nesterov=True)  # accepted there
  with pytest.raises(ValueError, match="nesterov"):
    optax_rms.rmsprop(0.1, nesterov=True)


@pytest.mark.parametrize(
  "make",
  [
    lambda: optax.rmsprop(0.1),
    lambda: optax.rmsprop(0.1, centered=True, momentum=0.9),
    lambda: optax.rmsprop(0.1, bias_correction=True),
  ],
  ids=["plain", "centered-momentum", "bias-correction"],
)
def test_optax_rmsprop_state_points_to_the_migration_helper(make):
  """A user resuming an optax.rmsprop checkpoint after the one-line swap
  was told the state was "made by another optimizer"; the fix is one call."""
  params = jnp.ones(3)
  old_state = make().init(params)
  tx = optax_rms.rmsprop(0.1)
  for state in (old_state, old_state[0]):
    with pytest.raises(TypeError, match=r"optax_rms\.from_optax_rmsprop_state"):
      tx.update(params, state)


def test_check_hyperparams_outside_checkify_names_the_option():
  """check_hyperparams=True called eagerly without checkify.checkify failed
  with JAX's internal message, naming neither the option nor the library.
  (Inside a plain jax.jit, JAX raises when that jit lowers: not ours.)"""
  from jax.experimental import checkify

  tx = optax_rms.rmsprop(lambda count: 0.1, check_hyperparams=True)
  params = jnp.ones(3)
  state = tx.init(params)
  pattern = r"optax_rms\.rmsprop\(check_hyperparams=True\).*checkify\.checkify"
  with pytest.raises(ValueError, match=pattern):
    tx.update(params, state)
  err, _ = checkify.checkify(tx.update)(params, state)
  err.throw()  # in range: no error
