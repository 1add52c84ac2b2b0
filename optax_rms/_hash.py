"""Counter-based random bits: an integer hash of (key words, element index).

The random bits that optax_rms draws inside a jitted step (the dither of the
8-bit codes, the coin of ``stochastic_rounding``) are a pure function of
counters the state already holds: the step, the parameter's index, the
element's index. Each element's bits are a few integer operations on an
iota, so XLA fuses them into the elementwise work that consumes them and no
array of random bits is ever materialized (``jax.random.bits`` on the CPU
backend writes its whole output, 4 bytes an element, before it is used).
"""

import jax
import jax.numpy as jnp
from jax import lax

_U32 = jnp.uint32


def mix32(x: jax.Array) -> jax.Array:
  """A bijection of uint32 with full avalanche (the "lowbias32" integer hash:
  xor-shifts and odd multipliers, as in MurmurHash3's finalizer)."""
  x = x ^ (x >> 16)
  x = x * _U32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * _U32(0x846CA68B)
  return x ^ (x >> 16)


def key(*words: jax.Array | int) -> jax.Array:
  """One uint32 scalar from several (traced or static) integer words.

  A Python int is taken modulo 2**32 (a seed in [2**31, 2**32) does not fit
  the int32 that ``jnp.asarray`` would make of it); an array is cast to
  uint32, which is the same modulo for int32 arrays.
  """
  k = jnp.asarray(0x3C6EF372, _U32)
  for w in words:
    word = _U32(w % 2**32) if isinstance(w, int) else jnp.asarray(w).astype(_U32)
    k = mix32(k ^ (word * _U32(0x9E3779B1)))
  return k


def element_bits(shape: tuple[int, ...], k: jax.Array) -> jax.Array:
  """32 random bits per element of an array of `shape`, from the key `k`.

  The element's row-major index (modulo 2**32) goes through two rounds of
  the finalizer, keyed by `k` and a second key derived from it. The index
  is built from iotas on the global shape, so a sharded array draws the bits
  of the unsharded one.
  """
  index = jnp.zeros(shape, _U32)
  stride = 1
  for axis in reversed(range(len(shape))):
    iota = lax.broadcasted_iota(_U32, shape, axis)
    index = index + iota * _U32(stride & 0xFFFFFFFF)
    stride *= shape[axis]
  k2 = mix32(k + _U32(0x6A09E667))
  return mix32(mix32(index ^ k) ^ k2)
