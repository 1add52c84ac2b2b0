"""The wrappers' contract: what every optax_rms wrapper refuses, and how.

A wrapper (``host_offload``, ``ema_params``, ``kahan_summation``,
``stochastic_rounding``, ``pack_small``) takes any optax transformation as
``inner``. Each refuses, with a TypeError that names the wrapper and the type
it got (as ``optax_rms.rmsprop`` does for its own state):

- an ``inner`` that is not a transformation (a number, None, the
  constructor ``optax.sgd`` instead of ``optax.sgd(0.1)``), when built;
- a state its ``init`` did not make (the inner transformation's own state,
  a dict from a checkpoint restored without a target), at ``update``, eagerly
  and under ``jit``.

Each wrapper's own numeric arguments are tested with their ranges beside the
wrapper (tests/test_rounding.py, test_ema.py, test_pack.py).
"""

import jax
import jax.numpy as jnp
import optax
import pytest

import optax_rms

BF16 = jnp.bfloat16

# name -> a function of inner building the wrapper with its defaults.
WRAPPERS = {
  "host_offload": optax_rms.host_offload,
  "ema_params": optax_rms.ema_params,
  "kahan_summation": optax_rms.kahan_summation,
  "stochastic_rounding": optax_rms.stochastic_rounding,
  "pack_small": optax_rms.pack_small,
}
wrappers = pytest.mark.parametrize("name", list(WRAPPERS))


def _params():
  # bfloat16, so that the rounding wrappers have a leaf to work on.
  return {"w": jnp.ones((4, 3), BF16), "b": jnp.zeros(3, BF16)}


def _grads():
  return jax.tree.map(lambda p: jnp.full(p.shape, 0.5, p.dtype), _params())


# not a transformation -> the type name the message gives.
NOT_TRANSFORMATIONS = {
  "int": (3, "int"),
  "none": (None, "NoneType"),
  "constructor": (optax.sgd, "function"),
  "str": ("rmsprop", "str"),
}


@wrappers
@pytest.mark.parametrize("bad", list(NOT_TRANSFORMATIONS))
def test_an_inner_that_is_not_a_transformation_is_refused_when_built(name, bad):
  inner, type_name = NOT_TRANSFORMATIONS[bad]
  with pytest.raises(
    TypeError, match=rf"optax_rms\.{name}: inner must be .*got {type_name}"
  ):
    WRAPPERS[name](inner)


def test_the_constructor_instead_of_a_transformation_gets_a_hint():
  with pytest.raises(TypeError, match=r"call it to build the transformation"):
    optax_rms.ema_params(optax_rms.rmsprop)


def _foreign_states():
  """label -> (a state no wrapper's init made, what the message says it is)."""
  params = _params()
  return {
    "inner-state": (optax_rms.rmsprop(0.1).init(params), "RMSPropState"),
    "optax-state": (optax.sgd(0.1, momentum=0.9).init(params), "tuple"),
    "restored-dict": ({"count": jnp.zeros([], jnp.int32)}, "dict"),
  }


@wrappers
@pytest.mark.parametrize("foreign", ["inner-state", "optax-state", "restored-dict"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_a_foreign_state_is_refused_naming_the_wrapper(name, foreign, jit):
  tx = WRAPPERS[name](optax_rms.rmsprop(0.1))
  state, what = _foreign_states()[foreign]
  update = jax.jit(tx.update) if jit else tx.update
  with pytest.raises(TypeError, match=rf"optax_rms\.{name}: expected .*got .*{what}"):
    update(_grads(), state, _params())


@wrappers
def test_the_wrappers_own_state_is_accepted(name):
  """The control of the refusals above: the same update on the state the
  wrapper's init made runs (eagerly and under jit) and keeps its tree."""
  tx = WRAPPERS[name](optax_rms.rmsprop(0.1))
  state = tx.init(_params())
  for update in (tx.update, jax.jit(tx.update)):
    _, new_state = update(_grads(), state, _params())
    assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_a_wrapper_around_a_wrapper_refuses_the_inner_wrappers_state():
  """kahan_summation(ema_params(...)) handed ema_params' state: named."""
  inner = optax_rms.ema_params(optax_rms.rmsprop(0.1))
  tx = optax_rms.kahan_summation(inner)
  with pytest.raises(
    TypeError, match=r"optax_rms\.kahan_summation: .*got .*EmaParamsState"
  ):
    tx.update(_grads(), inner.init(_params()), _params())
