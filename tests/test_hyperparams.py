"""Hyperparameters not known when the optimizer is built: values set in
optax.inject_hyperparams' state (traced under jit, concrete eagerly) and
check_hyperparams' run-time checks of them and of schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify

import optax_rms


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
    checkify.JaxRuntimeError,
    match=r"learning_rate must be a finite number >= 0, "
    r"got -0\.05.* at step 3",
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
