"""The optimizer update alone on one big leaf, the gradients an argument
(read only), params and state donated: the update's own peak, with nothing
of a model's forward and backward around it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..models import Scale
from ._common import Setup

TITLE = "Update alone"


def make_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
  def step(params, opt_state, carry, grads):
    # In the params' dtype, as a backward pass would give them (bfloat16 rows).
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, carry, ()

  return step


def _setup(n: int) -> Setup:
  rng = np.random.default_rng(3)
  params = {"w": jnp.asarray(0.02 * rng.standard_normal(n, dtype=np.float32))}
  grads = {"w": jnp.asarray(1e-3 * rng.standard_normal(n, dtype=np.float32))}
  return Setup(
    "one_leaf",
    f"one float32 leaf of {n:,} elements; the gradients (float32) are an "
    "argument, not computed",
    params,
    (),
    (grads,),
    make_step,
  )


def setups(scale: Scale) -> dict[str, Callable[[], Setup]]:
  return {"one_leaf": lambda: _setup(scale.update_leaf)}
