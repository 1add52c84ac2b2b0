"""The bounded cache of compiled update steps, one per configuration.

Python-number hyperparameters are compile-time constants of the step (see
``_rmsprop._apply``): that is what makes an eager update equal the same update
inside the user's jit bit for bit (benchmarks/eager_cache.md measures both),
and it costs one compile per distinct value. The cache is bounded so that a
sweep over many values (or many schedule objects, which are keys by
identity) does not hold every compiled step, and the closures in their keys,
for the life of the process: the least recently used is dropped, with its
compiled executable. CACHE_SIZE is far above the number of configurations one
program updates in turn (one per optimizer, or per multi_transform label);
more than that, updated round-robin in eager mode, would recompile.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Callable, Hashable
from typing import Any

import jax

CACHE_SIZE = 64
_compiled: collections.OrderedDict[Hashable, Callable[..., Any]] = (
  collections.OrderedDict()
)
_lock = threading.Lock()


def jitted(fn: Callable[..., Any], key: Hashable) -> Callable[..., Any]:
  """``jax.jit(functools.partial(fn, key=key))``, from the bounded cache."""
  with _lock:
    cache_key = (fn, key)
    step = _compiled.get(cache_key)
    if step is not None:
      _compiled.move_to_end(cache_key)
      return step
    step = jax.jit(functools.partial(fn, key=key))
    _compiled[cache_key] = step
    while len(_compiled) > CACHE_SIZE:
      _compiled.popitem(last=False)
    return step


def size() -> int:
  """How many compiled-step configurations the cache holds (for tests)."""
  return len(_compiled)
