"""Small leaves with 8-bit state, updated together as one flat vector.

XLA compiles a few kernels per leaf, and an 8-bit buffer's kernels are long
(its encoding is about a hundred operations), so a model's many small
leaves (norm scales, biases) made most of an 8-bit step's compile time. Here
the small leaves of one kind (the same dtypes and weight-decay flag) are
concatenated, each padded to a whole number of blocks, updated once in a
loop of one iteration (:func:`once`), and sliced back. The state keeps one
buffer per leaf, as without grouping.

Only configurations whose every buffer is 8-bit group their leaves: a float
buffer would be copied whole into the group, where alone it is updated in
place. The group's copies (the gradient, the codes) and the values it keeps
whole for its blocks' maxima cost about 17 bytes per grouped element at the
step's peak; GROUP bounds that to about 140 KB per group.

Each leaf's numbers are those of the leaf updated alone: the math is
elementwise; a leaf's blocks are the same elements, the padding's zeros
change no block's maximum (as the padding of a leaf's last block does
alone), and the stochastic rounding hashes each element's index within its
own parameter (``_quantize`` sees the group's segments, each a whole number
of blocks). The grouped step is another XLA program, which may contract a
multiply-add differently: a float number may differ in its last bit, and a
code whose value sat on a boundary by one code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optax_rms import _chunks
from optax_rms._quantize import BLOCK, Segments

# Leaves of at most this many elements are grouped (bitsandbytes keeps such
# leaves out of 8 bits altogether; here they keep their 8-bit state).
SMALL = 4096
# A group's flat vector holds at most this many elements (see the module's
# docstring: what a group adds to the peak).
GROUP = 1 << 13


class Group(NamedTuple):
  """Leaves updated as one flat vector: their indices in the tree, where
  each starts in the vector (a multiple of BLOCK), and the vector's length."""

  leaves: tuple[int, ...]
  starts: tuple[int, ...]
  size: int


def unsharded(x: Any) -> bool:
  """Whether `x`'s type names no mesh axis (under explicit sharding it does
  for an array laid out over devices, and concatenating such arrays would
  move them; under automatic sharding the type names none)."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec = getattr(sharding, "spec", ())
  return all(axis is None for axis in spec)


def _padded(n: int) -> int:
  return -(-n // BLOCK) * BLOCK


def plan(kinds: Sequence[Hashable | None], sizes: Sequence[int]) -> list[Group]:
  """Groups of two or more leaves of one kind, in tree order.

  `kinds`: per leaf, what must be equal within a group (None: the leaf is
  updated alone); `sizes`: per leaf, its number of elements. Only leaves of
  1 to SMALL elements are grouped.
  """
  open_: dict[Hashable, list[int]] = {}
  closed: list[list[int]] = []
  for i, (kind, n) in enumerate(zip(kinds, sizes, strict=True)):
    if kind is None or not 0 < n <= SMALL:
      continue
    members = open_.setdefault(kind, [])
    if sum(_padded(sizes[j]) for j in members) + _padded(n) > GROUP:
      closed.append(members)
      members = open_[kind] = []
    members.append(i)
  groups = []
  for members in sorted(closed + list(open_.values())):
    if len(members) < 2:
      continue
    starts, offset = [], 0
    for i in members:
      starts.append(offset)
      offset += _padded(sizes[i])
    groups.append(Group(tuple(members), tuple(starts), offset))
  return groups


def segments(group: Group, members: Sequence[Segments]) -> Segments:
  """The group vector's segments, from its members' own (one each): each
  leaf's parameter, padded."""
  out = []
  for segs, start, end in zip(members, group.starts, _ends(group), strict=True):
    ((param, _),) = segs
    out.append((param, (end - start,)))
  return tuple(out)


def _ends(group: Group) -> tuple[int, ...]:
  return (*group.starts[1:], group.size)


def once(
  f: Callable[[Any, jax.Array], Any], count: jax.Array, group: Group, inputs: Any
) -> tuple[Any, tuple[jax.Array, ...]]:
  """``f(inputs, zero)`` whole (``_chunks.once``), and the group's starts.

  `f` returns a tree of `inputs`' structure, shapes and dtypes (a group's
  gradient and buffers in, its step and new buffers out). XLA fuses an
  elementwise producer into each of its consumers when its operations are
  cheap, as an 8-bit encoding's bit operations are: sliced back into its
  leaves, a group's encoding would be compiled once per leaf again, where
  the outputs of ``_chunks.once``'s loop are buffers. The starts come out of
  the loop too, values XLA does not know: a slice at a known offset is a
  kernel of its own for each leaf, one at a traced offset the same kernel
  for every leaf of one size.
  """

  def run(carry: Any, zero: jax.Array) -> Any:
    values, starts = carry
    return f(values, zero), tuple(start + zero for start in starts)

  starts = tuple(jnp.int32(start) for start in group.starts)
  return _chunks.once(run, count, (inputs, starts))


def concat(arrays: Sequence[jax.Array], group: Group) -> jax.Array:
  """The leaves' arrays as one flat vector, each padded with zeros."""
  parts = []
  for x, start, end in zip(arrays, group.starts, _ends(group), strict=True):
    flat = jnp.ravel(x)
    parts.append(jnp.pad(flat, (0, end - start - flat.shape[0])))
  return jnp.concatenate(parts)


def split(
  flat: jax.Array, shapes: Sequence[tuple[int, ...]], starts: Sequence[jax.Array]
) -> list[Any]:
  """The inverse of :func:`concat`: each leaf's part, in its shape, from
  the starts :func:`once` gave."""
  return [
    jax.lax.dynamic_slice(flat, (start,), (math.prod(shape),)).reshape(shape)
    for start, shape in zip(starts, shapes, strict=True)
  ]


def concat_blocks(scales: Sequence[jax.Array]) -> jax.Array:
  """The leaves' per-block scales as one vector (a leaf padded to whole
  blocks has as many blocks as alone)."""
  return jnp.concatenate(list(scales))


def split_blocks(
  flat: jax.Array, shapes: Sequence[tuple[int, ...]], starts: Sequence[jax.Array]
) -> list[jax.Array]:
  """The inverse of :func:`concat_blocks`."""
  return [
    jax.lax.dynamic_slice(flat, (start // BLOCK,), (_blocks(shape),))
    for start, shape in zip(starts, shapes, strict=True)
  ]


def _blocks(shape: tuple[int, ...]) -> int:
  return _padded(math.prod(shape)) // BLOCK
