r"""Blockwise 8-bit storage for the second moment ``nu`` (>= 0).

Each parameter's ``nu`` is cut into blocks of ``BLOCK`` consecutive elements
(row-major). A block keeps its maximum :math:`s` in float32 and every element
as a uint8 code in the log domain:

.. math::
  k = 0 \iff \nu = 0, \qquad
  \nu(k) = s \, e^{-(255 - k)\,c}, \quad k = 1..255, \quad
  c = \ln(R) / 254,

so codes span a dynamic range :math:`R = 2^{24}` below the block's maximum
(a factor 4096 in root-mean-square) with a constant relative step
:math:`e^c - 1 \approx 6.8\%`. A positive value
below :math:`s/R` is stored as :math:`s/R` (a larger ``nu``: a smaller, never a
larger, step) and nothing positive becomes 0 (0 would mean a step of
:math:`g/\sqrt{\epsilon}`).

Rounding to the nearest code would freeze the EMA: with decay 0.99, ``nu``
changes by 1% a step, less than half a code, and would round back forever.
Each value is therefore rounded to one of its two neighbouring codes with
probabilities that make the stored value right on average (unbiased in
``nu``, so the EMA is too). The price is noise: re-rounded every step, it
settles in the EMA at a standard deviation of about
:math:`(e^c-1)/\sqrt{6}\,/\sqrt{1-\rho^2}` of ``nu`` (6% at decay 0.9, 19%
at 0.99), half that in the step size. The dither is a counter-based integer
hash of (step, leaf, element): deterministic, no random state, no global
state.

Memory: 1 byte + 4/``BLOCK`` bytes = 1.016 bytes per parameter.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

BLOCK = 256
_RANGE_LOG = 24 * math.log(2.0)  # ln(R), R = 2^24
_C = _RANGE_LOG / 254.0  # log step between codes
_STEP = math.expm1(_C)  # relative step between codes


def num_blocks(size: int) -> int:
  return max(1, -(-size // BLOCK))


def _blocks(x: jax.Array) -> jax.Array:
  """(size,) -> (num_blocks, BLOCK), zero-padded."""
  flat = x.reshape(-1)
  pad = num_blocks(flat.size) * BLOCK - flat.size
  return jnp.pad(flat, (0, pad)).reshape(-1, BLOCK)


def dequantize(codes: jax.Array, scales: jax.Array) -> jax.Array:
  """uint8 codes (param shape) and float32 block maxima -> float32 nu."""
  k = _blocks(codes).astype(jnp.float32)
  values = scales[:, None] * jnp.exp((k - 255.0) * _C)
  values = jnp.where(k == 0, 0.0, values)
  return values.reshape(-1)[: codes.size].reshape(codes.shape)


def _dither(shape: tuple[int, ...], count: jax.Array, leaf: int) -> jax.Array:
  """Uniform [0, 1) from a hash of (element index, step, leaf)."""
  idx = jnp.arange(math.prod(shape), dtype=jnp.uint32).reshape(shape)
  x = idx * jnp.uint32(0x9E3779B1)
  x = x ^ (count.astype(jnp.uint32) * jnp.uint32(0x85EBCA77))
  x = x ^ jnp.uint32((leaf * 0xC2B2AE3D) & 0xFFFFFFFF)
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  x = x ^ (x >> 16)
  return (x >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


def quantize(nu: jax.Array, count: jax.Array, leaf: int) -> tuple[jax.Array, jax.Array]:
  """float32 nu >= 0 -> (uint8 codes of nu's shape, float32 block maxima)."""
  blocks = _blocks(nu.astype(jnp.float32))
  scales = jnp.max(blocks, axis=1)
  safe = jnp.where(scales > 0, scales, 1.0)[:, None]
  # Code position in [1, 255]; the block maximum lands exactly on 255.
  pos = 255.0 + jnp.log(jnp.maximum(blocks, 0.0) / safe) / _C
  pos = jnp.clip(pos, 1.0, 255.0)
  low = jnp.floor(pos)
  # Round up with the probability that makes the stored value unbiased:
  # (v - v_low) / (v_high - v_low), with v_high / v_low = e^c.
  v_low = jnp.exp((low - 255.0) * _C) * safe
  p_up = (jnp.maximum(blocks, v_low) / v_low - 1.0) / _STEP
  dither = _blocks(_dither(nu.shape, count, leaf))
  k = jnp.minimum(low + (dither < p_up), 255.0)
  k = jnp.where(blocks > 0, k, 0.0)
  codes = k.astype(jnp.uint8).reshape(-1)[: nu.size].reshape(nu.shape)
  return codes, scales
