"""One leaf's update, mapped over the leaf in chunks where that saves memory.

Control flow only: the math is a function handed in (``_rmsprop``), the
storage forms are codecs (``_quantize``). :func:`map_leaf` runs a leaf's
update ``body(values, store)``: ``values`` holds the leaf-shaped inputs (the
gradient, the parameter, each buffer decoded), and ``body`` calls
``store(name, new_value)`` once per buffer, in order, continuing with the
value it returns: the buffer *as stored* (the decoded codes, or the float
buffer in its own dtype; for state as wide as the computation, as optax's,
that is the exact value, so the same numbers as optax).

The step reads the state it leaves behind, and that is what lets XLA update
a leaf without a float32 copy of it: the new buffers are written over the old
ones and what follows (the step, the parameter update fused into it) reads
only them. On a leaf of more than ``CHUNK`` elements with an 8-bit buffer
the update runs chunk by chunk in a loop (a block's maximum is needed before
its codes), since a reduction's input would otherwise be kept whole in memory
(XLA:CPU fuses into a reduction only plain arithmetic, not decoding or the
NaN filter); the step is then computed once more over the whole leaf, from
the stored buffers, fused into its consumer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from optax_rms._quantize import BLOCK, Segments, Storage, num_blocks

# Leaves of more elements than this are updated chunk by chunk when they
# have an 8-bit buffer. A multiple of BLOCK; a chunk's float32 values take
# 256 KiB.
CHUNK = 1 << 16

# body(values, store) -> the leaf's (or chunk's) result; see the docstring.
Store = Callable[[str, jax.Array], jax.Array]
Body = Callable[[dict[str, jax.Array], Store], jax.Array]


def map_leaf(
  body: Body,
  elements: dict[str, jax.Array],
  blocks: dict[str, jax.Array],
  segments: Segments,
  storage: Storage,
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
  """Runs `body` on one leaf, storing each buffer with `storage`.

  `elements`: the leaf-shaped inputs (the gradient "g", the parameter "p",
  each buffer as stored), `blocks`: the 8-bit buffers' per-block scales.
  Returns what `body` returns, the stored buffers and the 8-bit scales.

  A leaf of more than CHUNK elements with an 8-bit buffer runs chunk by
  chunk; any other leaf at once.
  """
  size = sum(_size(shape) for _, shape in segments)
  eight_bit = any(c.form != "float" for c in storage.codecs.values())
  if eight_bit and len(segments) == 1 and size > CHUNK:
    return _chunked(body, segments, storage, elements, blocks)
  return _whole(body, segments, storage, elements, blocks)


def once(f: Callable[[Any, jax.Array], Any], count: jax.Array, carry: Any) -> Any:
  """``f(carry, zero)``, its outputs (of `carry`'s structure) buffers (used by
  ``_group``).

  On the CPU, `f` runs in a while loop of one iteration, whose trip count
  XLA cannot see (it would inline a loop it knows runs once): it ends at
  ``1 - min(count, 0)``, 1 for a step count `count`, never negative. A
  loop's outputs are buffers, and what enters through its carry is an
  argument of the kernels inside, not a constant in them: the kernels of
  two leaves of one size are then the same computation, which XLA compiles
  once. `zero` is an int32 0 that changes with the iteration as far as XLA
  knows: what `f` computes from constants and the step count alone must
  add it, or XLA would compute it before the loop, a whole array kept in
  memory, where in the loop it is fused. Elsewhere (a GPU reads a while
  loop's condition back to the host) `f` is called as it is.
  """

  def looped(carry: Any) -> Any:
    zero = _opaque_zero(jnp.asarray(count))

    def step(c: tuple[jax.Array, Any]) -> tuple[jax.Array, Any]:
      i, x = c
      return i + 1, f(x, _opaque_zero(i))  # i is `zero`: 0

    return jax.lax.while_loop(lambda c: c[0] < 1 - zero, step, (zero, carry))[1]

  def direct(carry: Any) -> Any:
    return f(carry, jnp.zeros((), jnp.int32))

  return jax.lax.platform_dependent(carry, cpu=looped, default=direct)


def _whole(
  body: Body,
  segments: Segments,
  storage: Storage,
  elements: dict[str, jax.Array],
  blocks: dict[str, jax.Array],
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
  """The leaf updated at once."""
  writer = _Writer(storage, segments)
  result = body(_decoded(storage, elements, blocks, segments), writer.store)
  return result, writer.stored, writer.scales


def _chunked(
  body: Body,
  segments: Segments,
  storage: Storage,
  elements: dict[str, jax.Array],
  blocks: dict[str, jax.Array],
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
  """The leaf's buffers updated chunk by chunk, then its step from the
  stored buffers."""
  ((leaf, shape),) = segments
  size = _size(shape)
  # The inputs that are only read (the gradient, the parameter) enter the
  # loop as their bit patterns where narrower than float32: XLA would
  # otherwise widen them (a bfloat16 gradient, to float32 for the math)
  # before the loop, a float32 copy of the whole leaf.
  flat = {
    k: v.reshape(-1) if k in storage.codecs else _to_bits(v.reshape(-1))
    for k, v in elements.items()
  }
  dtypes = {k: v.dtype for k, v in elements.items()}
  chunk = functools.partial(_chunk, body, storage, flat, dtypes)
  carry = ({k: flat[k] for k in storage.codecs}, dict(blocks), _traced(leaf, storage))
  n = size // CHUNK
  carry = jax.lax.fori_loop(0, n, lambda i, c: chunk(i * CHUNK, CHUNK, c), carry)
  if size > n * CHUNK:
    carry = chunk(n * CHUNK, size - n * CHUNK, carry)
  stored = {k: v.reshape(shape) for k, v in carry[0].items()}
  reader = _Reader(storage, stored, carry[1], segments)
  result = body(_decoded(storage, elements, blocks, segments), reader.store)
  return result, stored, carry[1]


def _traced(leaf: Any, storage: Storage) -> jax.Array:
  """The parameter's number as a value XLA does not know (it minus
  ``min(count, 0)``, 0 for a step count, which is never negative). Through
  the loop's carry it reaches the stochastic rounding's seed as an argument
  of the loop's kernels, not a constant in them, so that XLA compiles those
  kernels once for all the leaves of one size (a kernel is compiled once per
  distinct computation)."""
  return jnp.int32(leaf) - _opaque_zero(jnp.asarray(storage.count))


def _chunk(
  body: Body,
  storage: Storage,
  flat: dict[str, jax.Array],
  dtypes: dict[str, Any],
  start: Any,
  length: int,
  carry: tuple[dict[str, jax.Array], dict[str, jax.Array], jax.Array],
) -> tuple[dict[str, jax.Array], dict[str, jax.Array], jax.Array]:
  """Updates the elements [start, start + length) of every buffer."""
  buffers, scales, leaf = carry
  segments = ((leaf, (length,)),)
  elements = {
    k: _from_bits(_read(buffers.get(k, v), start, length), dtypes[k])
    for k, v in flat.items()
  }
  blocks = {
    k: _read(v, _div(start, BLOCK), num_blocks(length)) for k, v in scales.items()
  }
  writer = _ChunkWriter(storage, segments, buffers, scales, start)
  body(_decoded(storage, elements, blocks, segments), writer.store)
  return writer.buffers, writer.scales, leaf


class _Writer:
  """`store` of a whole leaf: encodes, keeps, and decodes what it stored."""

  def __init__(self, storage: Storage, segments: Segments):
    self.storage, self.segments = storage, segments
    self.stored: dict[str, jax.Array] = {}
    self.scales: dict[str, jax.Array] = {}

  def store(self, name: str, value: jax.Array) -> jax.Array:
    stored, scale = self.storage.encode(name, value, self.segments)
    self.stored[name] = stored
    if scale is not None:
      self.scales[name] = scale
    back = self.storage.decode(name, stored, scale, self.segments)
    return back.astype(value.dtype)


class _Reader:
  """`store` after the chunk loop: the buffer as the loop stored it."""

  def __init__(self, storage: Storage, stored: dict, scales: dict, segments: Segments):
    self.storage, self.stored, self.scales = storage, stored, scales
    self.segments = segments

  def store(self, name: str, value: jax.Array) -> jax.Array:
    stored, scale = self.stored[name], self.scales.get(name)
    back = self.storage.decode(name, stored, scale, self.segments)
    return back.astype(value.dtype)


class _ChunkWriter:
  """`store` of one chunk: encodes and writes it in place, in order."""

  def __init__(
    self,
    storage: Storage,
    segments: Segments,
    buffers: dict[str, jax.Array],
    scales: dict[str, jax.Array],
    start: Any,
  ):
    self.storage, self.segments, self.start = storage, segments, start
    self.buffers, self.scales = dict(buffers), dict(scales)
    self.written: list[str] = []

  def store(self, name: str, value: jax.Array) -> jax.Array:
    ((_, (length,)),) = self.segments
    start, block = self.start, _div(self.start, BLOCK)
    codes, scale = self.storage.encode(name, value, self.segments, offset=start)
    # Write the buffers in the order they are stored: a buffer computed from
    # another's old values (the centered variance reads the old mean) is
    # then written before that one is overwritten, and XLA needs no copy of
    # the old buffer. The order is a data dependency: this write's offset
    # adds a zero read from the buffers written before it.
    at = start
    for previous in self.written:
      at = at + _opaque_zero(self.buffers[previous][start])
    self.written.append(name)
    self.buffers[name] = _write(self.buffers[name], codes, at)
    if scale is not None:
      self.scales[name] = _write(self.scales[name], scale, block)
      scale = _read(self.scales[name], block, num_blocks(length))
    # Read back from the buffer just written, so that XLA cannot recompute
    # the codes from the old ones after they are overwritten (it would copy
    # the whole buffer to keep them).
    codes = _read(self.buffers[name], start, length)
    back = self.storage.decode(name, codes, scale, self.segments)
    return back.astype(value.dtype)


def _decoded(
  storage: Storage,
  elements: dict[str, jax.Array],
  blocks: dict[str, jax.Array],
  segments: Segments,
) -> dict[str, jax.Array]:
  """The inputs with every buffer decoded (the others as they are)."""
  return {
    k: storage.decode(k, v, blocks.get(k), segments) if k in storage.codecs else v
    for k, v in elements.items()
  }


def _size(shape: tuple[int, ...]) -> int:
  out = 1
  for n in shape:
    out *= n
  return out


# The offsets are never negative: no wrapping (a few scalar operations per
# access, compiled for each leaf).
def _read(x: jax.Array, start: Any, n: int) -> jax.Array:
  return jax.lax.dynamic_slice(x, (start,), (n,), allow_negative_indices=False)


def _write(x: jax.Array, y: jax.Array, start: Any) -> jax.Array:
  return jax.lax.dynamic_update_slice(x, y, (start,), allow_negative_indices=False)


def _div(start: Any, n: int) -> Any:
  """start // n, for a power of two n and a start that is never negative:
  a shift (a traced floor division corrects for negative numbers)."""
  assert n & (n - 1) == 0, n
  return start >> (n.bit_length() - 1)


def _opaque_zero(x: jax.Array) -> jax.Array:
  """An int32 0 that XLA cannot fold away: a data dependency on `x` (a float,
  or an integer that is never negative, e.g. a step count)."""
  if jnp.issubdtype(x.dtype, jnp.floating):  # its top 8 bits: 0..255
    bits = 8 * x.dtype.itemsize
    x = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{bits}")) >> (bits - 8)
  return jnp.minimum(x.astype(jnp.int32), 0)


def _to_bits(x: jax.Array) -> jax.Array:
  """A float array narrower than float32 as its bit pattern (an unsigned int
  of its width); others as they are."""
  if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype.itemsize >= 4:
    return x
  return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))


def _from_bits(x: jax.Array, dtype: Any) -> jax.Array:
  """The inverse of _to_bits, to `dtype`."""
  return x if x.dtype == dtype else jax.lax.bitcast_convert_type(x, dtype)
