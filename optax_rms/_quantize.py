r"""The storage forms of the state's buffers, one codec each.

A buffer of :class:`~optax_rms.RMSPropState` is stored in one of three forms:

- ``"float"``: an array of its own floating dtype (float32, bfloat16, ...);
- ``"log8"`` (``nu_quantization="8bit"``, ``nu >= 0``): uint8 codes of an
  unsigned 8-bit float (exponent and mantissa) relative to each block's
  maximum, plus that maximum in float32;
- ``"signed8"`` (``mu_quantization`` / ``momentum_quantization="8bit"``):
  uint8 codes of a sign and a 7-bit float magnitude, plus each block's
  maximum magnitude in float32.

Each form is one :class:`Codec` (``init`` / ``encode`` / ``decode``):
:data:`CODECS`. The update math (``_rmsprop``) sees decoded (float) arrays
only, and ``_chunks`` encodes what it stores and decodes it back; neither
branches on the form. Adding a form touches this module and its tests only.

**Blocks.** A buffer is cut into blocks of ``BLOCK`` consecutive elements
(row-major) *within one parameter*: a block never spans two parameters, also
under ``optax_rms.pack_small``, whose flat vectors hold several parameters
(their ``segments`` say where each one starts; see :func:`leaf_segments`).

**Codes.** Within a block, each value :math:`v` is stored relative to the
block's maximum finite magnitude :math:`s` as a small float. ``log8`` keeps
:math:`r = 1.75\,\nu/s \in [0, 1.75]` with 5 exponent and 3 mantissa bits:
code :math:`k = 8e + m` holds :math:`2^{e-31}(1 + m/8)`, so the block
maximum is code 254 (:math:`1.75 = 1.110_2`), :math:`k = 0` is exactly 0 and
:math:`k = 255` is :math:`+\infty`. That is a dynamic range of
:math:`2^{32}` in ``nu`` (:math:`2^{16}` in its square root, the step size)
with a relative step between neighbouring codes of 6.25-12.5% (3.1-6.25% in
the step size). A positive value below code 1 is stored at code 1 (a larger
``nu``, so a smaller, never a larger, step), and nothing positive becomes 0
(0 would mean a step of :math:`g/\sqrt{\epsilon}`). ``signed8``: bit 7 is
the sign, bits 0-6 a magnitude :math:`r = 1.875\,|v|/s` with 4 exponent and
3 mantissa bits (the FP8 E4M3 layout, scaled per block),
:math:`2^{e-15}(1 + m/8)`, and below :math:`2^{-14}` evenly spaced down to 0
(as IEEE subnormals): a dynamic range of :math:`2^{16}` below the block
maximum, then a linear tail to 0. Both are dynamic (floating-point) codes,
as bitsandbytes' 8-bit optimizers use for their states: relative precision
is the same from the block's maximum down to its floor, where a linear code
would flush small elements to zero. Decoding is a few integer operations on
the code's bits.

**Stochastic rounding.** Rounding to the nearest code would freeze an EMA:
with decay 0.99, ``nu`` changes by 1% a step, less than half a code, and
would round back forever. Each value is rounded to one of its two
neighbouring codes with the probability that makes the stored value right on
average (unbiased in value, so the EMAs are too). The price is noise:
re-rounded every step, it settles in an EMA of decay :math:`\rho` at a
standard deviation of about :math:`\delta/\sqrt{6}\,/\sqrt{1-\rho^2}` of the
value for a relative code step :math:`\delta` (for 9%, a typical step: 8% at
decay 0.9, 26% at 0.99; half that in the step size, which goes as
:math:`1/\sqrt{\nu}`). The dither is a counter-based integer hash
of (step, parameter, element, buffer): deterministic, no random state.

**Non-finite values** (an overflowing ``g**2``, an inf or NaN gradient)
never reach a block's scale, which is the maximum over the block's finite
elements: the other elements of the block keep their statistics, codes and
steps. The element itself: a non-finite ``nu`` is stored as :math:`+\infty`
(code 255), as float state would hold it (inf: that element's steps are 0
from then on; NaN gradients make its parameter NaN, as with float state); a
signed code stores :math:`\pm\infty` as the block's largest magnitude with
its sign and NaN as NaN (code 128, which would otherwise be a second zero),
so a NaN gradient propagates through 8-bit ``mu`` and momentum as through
float ones. A finite but very large element is another matter:
it sets its block's scale, and the neighbours' values far below it lose
precision (the price of per-block scales, here as in any blockwise format).

**Memory at the peak.** Decoding is cheap elementwise work that XLA
recomputes inside each consumer instead of keeping a float32 copy of the
leaf, and ``_chunks.map_leaf`` orders the work so that every buffer is
written over its old codes (see there): the update needs no temporary the
size of a leaf beyond what float state needs.

Memory: 1 byte + 4/``BLOCK`` bytes = 1.016 bytes per parameter and buffer.
"""

import math
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from optax_rms._hash import mix32

BLOCK = 256
FORMS = ("float", "log8", "signed8")

# A parameter's place in a stored leaf: (parameter id, shape). A leaf holds
# one (its own) or, under pack_small, several, in order. In the chunk loop
# the id is traced (see _chunks._traced).
Segment = tuple[int | jax.Array, tuple[int, ...]]
Segments = tuple[Segment, ...]

# Relative to its block's maximum s, a code holds a small float: for nu
# ("log8") 5 exponent bits and 3 mantissa bits, for the signed codes' 7-bit
# magnitude ("signed8") 4 and 3. Every value is stored scaled by top / s, so
# that the block maximum is the largest finite code: 1.75 = 2^0 * 1.110b for
# log8 (whose code 255 is +inf), 1.875 = 2^0 * 1.111b for signed8.
_TOP = {"log8": 1.75, "signed8": 1.875}
# Code k (>= 1; >= 8 for signed8) <-> float32 bits (k << 20) + bias: exponent
# k >> 3 above the smallest binade, mantissa k & 7.
_LOG8_BIAS = (127 - 31) << 23  # 2^-31: the binade of codes 1..7
_SIGNED8_BIAS = (127 - 15) << 23  # 2^-14: the binade of codes 8..15
_SUBNORMAL = 2.0**-17  # signed8 codes 0..7: k * 2^-17, linear to 0
_STEP = 0.125  # largest relative step between neighbouring codes
_LOG8_INF = 255  # log8's code for a non-finite nu
_SIGNED8_NAN = 128  # signed8's code for NaN (a "-0", never needed for 0)
_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32

# Dither streams, one per buffer, so that nu, mu and momentum round
# independently.
STREAMS = {"nu": 0, "mu": 1, "momentum": 2}


def num_blocks(size: int) -> int:
  """Blocks of one parameter of `size` elements (at least one)."""
  return max(1, -(-size // BLOCK))


def segments_blocks(segments: Segments) -> int:
  return sum(num_blocks(math.prod(shape)) for _, shape in segments)


def leaf_segments(tree: Any) -> list[Segments]:
  """One `Segments` per leaf of `tree`: where each parameter sits in it.

  A plain leaf holds one parameter, numbered by its position in the tree. A
  flat vector of ``optax_rms.pack_small`` holds several, numbered by their
  position in the user's tree (so their codes match the unpacked ones).
  """
  from optax_rms._pack import PackedLeaves  # _pack does not import this module

  out: list[Segments] = []
  for node in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, PackedLeaves)):
    if isinstance(node, PackedLeaves) and node.segments is not None:
      out.extend(node.segments)
    elif isinstance(node, PackedLeaves):
      for leaf in jax.tree.leaves(node):
        out.append(((len(out), tuple(np.shape(leaf))),))
    else:
      out.append(((len(out), tuple(np.shape(node))),))
  return out


def _sizes(segments: Segments) -> list[int]:
  return [math.prod(shape) for _, shape in segments]


def _aligned(segments: Segments) -> bool:
  """Several segments, each a whole number of blocks (a group of small
  leaves, see ``_group``): their blocks are the flat leaf's, cut every BLOCK
  elements, so the per-block operations below need no loop over them."""
  return len(segments) > 1 and all(size % BLOCK == 0 for size in _sizes(segments))


def _block_max(flat: jax.Array, segments: Segments) -> jax.Array:
  """Per-block maximum of a flat leaf, blocks cut within each segment."""
  if _aligned(segments):
    return jnp.max(flat.reshape(-1, BLOCK), axis=1)
  parts, offset = [], 0
  for size in _sizes(segments):
    seg = flat[offset : offset + size]
    offset += size
    pad = num_blocks(size) * BLOCK - size
    if pad:
      seg = jnp.pad(seg, (0, pad))
    parts.append(jnp.max(seg.reshape(-1, BLOCK), axis=1))
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def _per_element(scales: jax.Array, segments: Segments) -> jax.Array:
  """Each element's block scale, as a flat leaf (a broadcast, fused)."""
  if _aligned(segments):
    return jnp.broadcast_to(scales[:, None], (scales.shape[0], BLOCK)).reshape(-1)
  parts, first = [], 0
  for size in _sizes(segments):
    n = num_blocks(size)
    block = jnp.broadcast_to(scales[first : first + n, None], (n, BLOCK))
    parts.append(block.reshape(-1)[:size])
    first += n
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def _dither(
  segments: Segments, count: jax.Array, stream: int, offset: Any = 0
) -> jax.Array:
  """32 random bits from a hash of (element, parameter, step, stream)."""
  if _aligned(segments):
    x = _aligned_words(segments, stream, count)
    return mix32(x ^ (count.astype(jnp.uint32) * jnp.uint32(0x85EBCA77)))
  parts = []
  for (leaf, _), size in zip(segments, _sizes(segments), strict=True):
    index = jnp.arange(size, dtype=jnp.uint32) + jnp.asarray(offset).astype(jnp.uint32)
    x = index * jnp.uint32(0x9E3779B1)
    parts.append(x ^ _seed(leaf, stream))
  x = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
  return mix32(x ^ (count.astype(jnp.uint32) * jnp.uint32(0x85EBCA77)))


def _seed_value(leaf: int, stream: int) -> int:
  return (leaf * 0xC2B2AE3D + stream * 0x27D4EB2F) & 0xFFFFFFFF


def _seed(leaf: int | jax.Array, stream: int) -> jax.Array:
  """A parameter's and stream's seed. `leaf`: its number, or that number
  traced (the chunk loop's, so that leaves of one size share its kernels):
  the same uint32 either way."""
  if isinstance(leaf, int):
    return jnp.uint32(_seed_value(leaf, stream))
  base = jnp.uint32(_seed_value(0, stream))
  return jnp.asarray(leaf).astype(jnp.uint32) * jnp.uint32(0xC2B2AE3D) + base


def _aligned_words(segments: Segments, stream: int, count: jax.Array) -> jax.Array:
  """_dither's words before the hash, for aligned segments (offset 0): each
  block's first index within its parameter and its parameter's seed are
  per-block constants, broadcast over the block as the scales are.

  The indices add ``min(count, 0)``, 0 for a step count: computed from
  constants alone, they would be computed before the loop that updates a
  group (``_group.once``), a whole array kept in memory, where in the loop
  they are fused."""
  starts: list[int] = []
  seeds: list[int] = []
  for (leaf, _), size in zip(segments, _sizes(segments), strict=True):
    assert isinstance(leaf, int), "a group's segments are numbered statically"
    starts.extend(range(0, size, BLOCK))
    seeds.extend([_seed_value(leaf, stream)] * (size // BLOCK))
  within = jnp.arange(BLOCK, dtype=jnp.uint32)[None, :]
  first = jnp.asarray(starts, jnp.uint32) + jnp.minimum(count, 0).astype(jnp.uint32)
  index = (first[:, None] + within).reshape(-1)
  seed = jnp.broadcast_to(
    jnp.asarray(seeds, jnp.uint32)[:, None], (len(seeds), BLOCK)
  ).reshape(-1)
  return (index * jnp.uint32(0x9E3779B1)) ^ seed


def _to_float(bits: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _magnitude(form: str, codes: jax.Array) -> jax.Array:
  """Code -> value relative to the block maximum (times top): bit ops only,
  so XLA recomputes it in each consumer instead of storing it."""
  if form == "log8":
    k = codes.astype(jnp.int32)
    value = jnp.where(k == 0, 0.0, _to_float((k << 20) + _LOG8_BIAS))
    return jnp.where(k == _LOG8_INF, jnp.inf, value)
  k = (codes & 0x7F).astype(jnp.int32)
  normal = _to_float((k << 20) + _SIGNED8_BIAS)
  magnitude = jnp.where(k >= 8, normal, k.astype(jnp.float32) * _SUBNORMAL)
  value = jnp.where(codes >= 128, -magnitude, magnitude)
  return jnp.where(codes == _SIGNED8_NAN, jnp.nan, value)


def _relative(
  magnitude: jax.Array, scales: jax.Array, top: float, segments: Segments
) -> jax.Array:
  """``top * magnitude / scale`` per element, in [0, top] (finite elements).

  Not ``magnitude * (top / scale)``: that reciprocal is below float32's
  smallest normal number, flushed to 0, for a scale above 2^126 (and XLA
  turns a division by a broadcast scale into that product). Each block's
  scale is split into ``2^e * m`` with ``m`` in [1, 2); ``magnitude / 2^e``
  is an exact integer subtraction on the exponent bits, and ``top / m`` is
  always a normal number. Magnitudes below the smallest normal are 0.
  """
  bits = jax.lax.bitcast_convert_type(scales, jnp.int32)
  normal = scales >= _TINY
  exponent = jnp.where(normal, (bits >> 23) - 127, 0)
  mantissa = jnp.where(normal, _to_float(bits - (exponent << 23)), 1.0)
  shifted = jax.lax.bitcast_convert_type(magnitude, jnp.int32) - (
    _per_element(exponent, segments) << 23
  )
  x = jnp.where((magnitude >= _TINY) & (shifted > 0), _to_float(shifted), 0.0)
  return jnp.minimum(x * _per_element(top / mantissa, segments), top)


def _round(form: str, r: jax.Array, bits: jax.Array) -> jax.Array:
  """r in [0, top] -> its code, rounded stochastically by 32 random bits.

  In a binade the codes are evenly spaced in the float's mantissa, so adding
  20 random low bits before truncating rounds up with probability equal to
  the distance to the lower code: unbiased.
  """
  up = (bits >> 12).astype(jnp.int32)  # 20 random bits
  raw = jax.lax.bitcast_convert_type(r, jnp.int32) + up
  if form == "log8":  # below code 1: stored at code 1, never 0
    return jnp.clip((raw - _LOG8_BIAS) >> 20, 1, _LOG8_INF - 1)
  uniform = (bits >> 8).astype(jnp.float32) * 2.0**-24
  subnormal = jnp.floor(r / _SUBNORMAL + uniform)
  normal = jnp.minimum((raw - _SIGNED8_BIAS) >> 20, 127)
  return jnp.where(r >= 8 * _SUBNORMAL, normal, subnormal.astype(jnp.int32))


class Codec(Protocol):
  """One storage form of a state buffer.

  ``init`` makes a buffer for a parameter, every element one value;
  ``encode`` stores an array of values (`dtype`: the float form's dtype;
  `count`, `stream` and `offset` seed the 8-bit forms' stochastic rounding,
  `offset` being the index of the first element within its parameter, for a
  chunk); ``decode`` gives the values back (float32 for the 8-bit forms).
  The 8-bit forms return per-block scales beside their codes; the float form
  None.
  """

  form: str

  def stored_dtype(self, float_dtype: Any) -> Any: ...

  def init(
    self, p: Any, value: Any, dtype: Any, segments: Segments
  ) -> tuple[jax.Array, jax.Array | None]: ...

  def encode(
    self,
    value: jax.Array,
    dtype: Any,
    count: jax.Array,
    stream: int,
    segments: Segments,
    offset: Any = 0,
  ) -> tuple[jax.Array, jax.Array | None]: ...

  def decode(
    self, stored: jax.Array, scale: jax.Array | None, segments: Segments
  ) -> jax.Array: ...


class FloatCodec:
  """A buffer in a float dtype of its own: stored as it is."""

  form = "float"

  def stored_dtype(self, float_dtype: Any) -> Any:
    return float_dtype

  def init(self, p, value, dtype, segments):
    return jnp.full_like(p, value, dtype=dtype), None

  def encode(self, value, dtype, count, stream, segments, offset=0):
    return value.astype(dtype), None

  def decode(self, stored, scale, segments):
    return stored


class BlockCodec:
  """8-bit codes relative to each block's maximum finite magnitude (see the
  module's docstring): "log8" (unsigned, nu) or "signed8" (mu, momentum)."""

  def __init__(self, form: str):
    self.form = form
    self.top = _TOP[form]

  def stored_dtype(self, float_dtype: Any) -> Any:
    return jnp.dtype(jnp.uint8)

  def init(self, p, value, dtype, segments):
    value = jnp.asarray(value, jnp.float32)
    if self.form == "log8":  # every element equals its block's maximum
      code = jnp.where(value > 0, _LOG8_INF - 1, 0)
    else:  # signed8: the largest magnitude code, with the value's sign
      code = jnp.where(value == 0, 0, jnp.where(value > 0, 127, 255))
    codes = jnp.full_like(p, code, dtype=jnp.uint8)
    blocks = segments_blocks(segments)
    return codes, jnp.full((blocks,), jnp.abs(value), dtype=jnp.float32)

  def encode(self, value, dtype, count, stream, segments, offset=0):
    flat = value.astype(jnp.float32).reshape(-1)
    magnitude = jnp.abs(flat)
    finite = magnitude < jnp.inf  # False for inf and NaN
    scales = _block_max(jnp.where(finite, magnitude, 0.0), segments)
    r = _relative(magnitude, scales, self.top, segments)
    k = _round(self.form, r, _dither(segments, count, stream, offset))
    if self.form == "log8":  # 0 stays 0; inf and NaN: inf (as float state's)
      k = jnp.where(finite, jnp.where(magnitude > 0, k, 0), _LOG8_INF)
    else:  # +-inf: the largest magnitude, signed; NaN: its own code ("-0")
      k = jnp.where(finite, k, 127)
      k = jnp.where((flat < 0) & (k > 0), k + 128, k)
      k = jnp.where(jnp.isnan(flat), _SIGNED8_NAN, k)
    return k.astype(jnp.uint8).reshape(value.shape), scales

  def decode(self, stored, scale, segments):
    assert scale is not None, "an 8-bit buffer needs its scales"
    scale = _per_element(scale, segments) * (1 / self.top)
    value = _magnitude(self.form, stored.reshape(-1)) * scale
    return value.reshape(stored.shape)


CODECS: dict[str, Codec] = {
  "float": FloatCodec(),
  "log8": BlockCodec("log8"),
  "signed8": BlockCodec("signed8"),
}


def codec(form: str) -> Codec:
  """The codec of storage form `form` (one of FORMS)."""
  return CODECS[form]


class Storage(NamedTuple):
  """How one leaf's buffers are stored: each buffer's codec and dtype, and
  the step count that seeds the 8-bit forms' rounding."""

  codecs: dict[str, Codec]
  dtypes: dict[str, Any]
  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count

  def encode(
    self, name: str, value: jax.Array, segments: Segments, offset: Any = 0
  ) -> tuple[jax.Array, jax.Array | None]:
    return self.codecs[name].encode(
      value, self.dtypes[name], self.count, STREAMS[name], segments, offset
    )

  def decode(
    self, name: str, stored: jax.Array, scale: jax.Array | None, segments: Segments
  ) -> jax.Array:
    return self.codecs[name].decode(stored, scale, segments)


# Encoding and decoding by form name, as functions (tests and benchmarks
# call these).


def encode(
  form: str,
  value: jax.Array,
  dtype: Any,
  count: jax.Array,
  stream: int,
  segments: Segments,
  offset: Any = 0,
) -> tuple[jax.Array, jax.Array | None]:
  """`value` stored in `form` (`dtype` for "float"): (stored, scale)."""
  return CODECS[form].encode(value, dtype, count, stream, segments, offset)


def decode(
  form: str, stored: jax.Array, scale: jax.Array | None, segments: Segments
) -> jax.Array:
  """The stored buffer as an array of values (float32 for the 8-bit forms)."""
  return CODECS[form].decode(stored, scale, segments)
