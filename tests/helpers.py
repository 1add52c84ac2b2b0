"""What the test files share, defined once: the rmsprop variants, the storage
forms of the state, a training step, exact-equality and eager == jit
assertions, an orbax round trip, and the one marker for known bugs.

Import as ``import helpers`` or ``from helpers import ...`` (pytest puts
tests/ on sys.path). Tolerances per dtype, with the reason for each, live in
``tolerances.py`` and are re-exported here.
"""

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tolerances import (  # noqa: F401  (re-exported)
  LOW_PRECISION_UPDATE,
  SAME_MATH,
  VS_FLOAT64,
  VS_FRAMEWORK,
  assert_close,
)

# ----------------------------------------------------------------- variants

# optax_rms.rmsprop's variants (keyword arguments besides the learning rate).
# A test file takes the ones it needs with `pick`, so one name always means
# one configuration.
VARIANTS: dict[str, dict[str, Any]] = {
  "plain": dict(),
  "centered": dict(centered=True),
  "momentum": dict(momentum=0.9),
  "nesterov": dict(momentum=0.9, nesterov=True),
  "centered-momentum": dict(centered=True, momentum=0.9),
  "centered-nesterov": dict(centered=True, momentum=0.9, nesterov=True),
  "bias_correction": dict(bias_correction=True),
  "centered-momentum-bias_correction": dict(
    centered=True, momentum=0.8, bias_correction=True
  ),
  "eps_outside": dict(eps_in_sqrt=False),
  "wd-coupled": dict(weight_decay=1e-2),
  "wd-decoupled": dict(weight_decay=1e-2, weight_decay_mode="decoupled"),
}


def pick(*names: str) -> dict[str, dict[str, Any]]:
  """The named entries of VARIANTS, in the order given."""
  return {name: VARIANTS[name] for name in names}


def parametrize_variants(*names: str, argname: str = "kwargs"):
  """`pytest.mark.parametrize` over the named variants, ids = their names."""
  chosen = pick(*names)
  return pytest.mark.parametrize(argname, list(chosen.values()), ids=list(chosen))


# ------------------------------------------------------------ storage forms

# How the state's buffers are stored (keywords of optax_rms.rmsprop and of
# every compat preset). The 8-bit forms of mu and momentum need the buffer to
# exist: use them with centered=True and momentum.
STORAGE: dict[str, dict[str, Any]] = {
  "float32": dict(),
  "bf16_state": dict(
    nu_dtype="bfloat16", mu_dtype="bfloat16", momentum_dtype="bfloat16"
  ),
  "8bit_nu": dict(nu_quantization="8bit"),
  "8bit_mu": dict(mu_quantization="8bit"),
  "8bit_momentum": dict(momentum_quantization="8bit"),
  "8bit_all": dict(
    nu_quantization="8bit", mu_quantization="8bit", momentum_quantization="8bit"
  ),
}


def is_8bit(storage: dict[str, Any]) -> bool:
  return any(k.endswith("_quantization") for k in storage)


# ------------------------------------------------------------- known bugs


def known_bug(reason: str) -> pytest.MarkDecorator:
  """A promise that today's code breaks, asserted as it should hold.

  strict: the test fails as soon as the bug is fixed, so the mark is removed
  with the fix. Every such mark goes through here (grep KNOWN).
  """
  return pytest.mark.xfail(strict=True, reason=f"KNOWN: {reason}")


# ------------------------------------------------------------------ stepping


def make_step(
  tx: optax.GradientTransformation, update: Callable[..., Any] | None = None
) -> Callable[..., Any]:
  """(params, state, grads) -> (params, state, updates): one training step.

  `update`: tx.update, or a transformed one (``jax.jit(tx.update)``). Pass it
  rather than jitting the whole step when comparing with the eager update:
  jitted together, XLA may fuse the update with ``apply_updates`` (one FMA)
  and round the parameters differently.
  """
  update = tx.update if update is None else update

  def step(params, state, grads):
    updates, state = update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  return step


def run(
  tx: optax.GradientTransformation,
  params: Any,
  grads_seq: Iterable[Any],
  state: Any = None,
  step: Callable[..., Any] | None = None,
) -> tuple[Any, Any, list[Any]]:
  """Steps through `grads_seq`: (params, state, [updates of each step]).

  A state made here is committed to its devices (as a jitted step's outputs
  and orbax's restored arrays are), so that it is one signature for jit.
  """
  state = committed(tx.init(params)) if state is None else state
  step = make_step(tx) if step is None else step
  updates = []
  for grads in grads_seq:
    params, state, u = step(params, state, grads)
    updates.append(u)
  return params, state, updates


def committed(tree: Any) -> Any:
  """Each array committed to the devices and memory it is on."""
  return jax.tree.map(lambda x: jax.device_put(x, x.sharding), tree)


# ------------------------------------------------------------- assertions


def _bits(x: Any) -> np.ndarray:
  """The bytes of an array, so that -0.0 != 0.0 and NaN payloads count."""
  a = np.asarray(x)
  return (
    a.view(np.dtype(f"u{a.dtype.itemsize}")) if a.dtype.itemsize in (1, 2, 4, 8) else a
  )


def assert_trees_equal(actual: Any, desired: Any, bitwise: bool = False) -> None:
  """Same tree structure, same dtypes and the same values (NaN == NaN);
  `bitwise`: the same bits (signed zeros and NaN payloads too)."""
  assert jax.tree.structure(actual) == jax.tree.structure(desired), (
    jax.tree.structure(actual),
    jax.tree.structure(desired),
  )
  pairs = zip(
    jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(desired), strict=True
  )
  for (path, a), d in pairs:
    a, d = np.asarray(a), np.asarray(d)
    where = jax.tree_util.keystr(path)
    assert a.dtype == d.dtype and a.shape == d.shape, (where, a.dtype, d.dtype)
    if bitwise:
      np.testing.assert_array_equal(_bits(a), _bits(d), err_msg=where)
    else:
      np.testing.assert_array_equal(a, d, err_msg=where)


def assert_trees_close(actual: Any, desired: Any, **tol: Any) -> None:
  """Same tree structure, shapes and dtypes; values allclose with `tol`."""
  assert jax.tree.structure(actual) == jax.tree.structure(desired)
  pairs = zip(
    jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(desired), strict=True
  )
  for (path, a), d in pairs:
    a, d = np.asarray(a), np.asarray(d)
    where = jax.tree_util.keystr(path)
    assert a.shape == d.shape and a.dtype == d.dtype, where
    np.testing.assert_allclose(a, d, err_msg=where, **tol)


def assert_eager_equals_jit(
  tx: optax.GradientTransformation, params: Any, grads_seq: Iterable[Any]
) -> None:
  """Eager `update` and `jax.jit(update)` give the same updates, states and
  parameters, bit for bit, step after step (the eager call is the same
  compiled computation; see docs/numerics.md)."""
  grads_seq = list(grads_seq)
  eager = run(tx, params, grads_seq)
  jitted = run(tx, params, grads_seq, step=make_step(tx, jax.jit(tx.update)))
  assert_trees_equal(eager, jitted, bitwise=True)


# ------------------------------------------------------------------- orbax


def orbax_round_trip(tx: optax.GradientTransformation, params: Any, state: Any, path):
  """Saves `state` with orbax and restores it as a fresh process would: with
  the target `jax.eval_shape(tx.init, params)`."""
  import orbax.checkpoint as ocp

  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, state)
    ckptr.wait_until_finished()
    return ckptr.restore(path, jax.eval_shape(tx.init, params))


def tree_dtypes(tree: Any) -> Any:
  return jax.tree.map(lambda x: jnp.asarray(x).dtype, tree)
