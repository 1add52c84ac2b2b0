"""The whole train step on each model: forward, loss, backward, optimizer
update, with the params, the optimizer state and the batchnorm statistics
donated, as a Flax NNX user writes it (nnx.split, a functional step, optax)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ..models import ModelSpec, Scale, cross_entropy
from ._common import Setup

TITLE = "Whole train step"


def make_step(graphdef: Any, tx: optax.GradientTransformation) -> Callable[..., Any]:
  """step(params, opt_state, batch_stats, x, y) -> (params, opt_state,
  batch_stats, loss), to be jitted with the first three donated."""

  def step(params, opt_state, batch_stats, x, y):
    def loss_fn(params):
      # copy=True: the merged module's Variables belong to this trace, so the
      # batchnorm layers may update their statistics in it.
      model = nnx.merge(graphdef, params, batch_stats, copy=True)
      loss = cross_entropy(model(x), y)
      return loss, nnx.state(model, nnx.BatchStat)

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, batch_stats, loss

  return step


def _setup(spec: ModelSpec) -> Setup:
  graphdef, params, batch_stats = nnx.split(spec.build(), nnx.Param, nnx.BatchStat)
  x, y = spec.batch()
  return Setup(
    spec.name,
    spec.description,
    params,
    batch_stats,
    (jnp.asarray(x), jnp.asarray(y)),
    lambda tx: make_step(graphdef, tx),
  )


def setups(scale: Scale) -> dict[str, Callable[[], Setup]]:
  """One table per model, built when asked for."""
  return {spec.name: (lambda spec=spec: _setup(spec)) for spec in scale.models}
