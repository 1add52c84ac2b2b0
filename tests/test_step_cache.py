"""The bounded cache of compiled steps (one per configuration of Python-number
hyperparameters): a learning-rate sweep does not hold every compiled step, nor
the schedules in their keys, for the life of the process."""

import gc
import weakref

import jax.numpy as jnp

import optax_rms
from optax_rms import _jit_cache, _rmsprop


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
