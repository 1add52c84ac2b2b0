"""The benchmark's models, written with Flax NNX, and the scales they run at.

Each `ModelSpec` builds a model, a batch and a loss. The train step threads
the model's `nnx.Param` state through optax (the params an optimizer sees)
and, for the CNN, its `nnx.BatchStat` state (running means, updated by the
forward pass, not by the optimizer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# ---------------------------------------------------------------------------
# Models.


class Block(nnx.Module):
  """Pre-norm transformer block: causal self-attention and a 4x MLP."""

  def __init__(self, d: int, heads: int, rngs: nnx.Rngs):
    self.heads = heads
    self.ln1 = nnx.LayerNorm(d, rngs=rngs)
    self.qkv = nnx.Linear(d, 3 * d, rngs=rngs)
    self.out = nnx.Linear(d, d, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d, rngs=rngs)
    self.fc = nnx.Linear(d, 4 * d, rngs=rngs)
    self.proj = nnx.Linear(4 * d, d, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
    q, k, v = (y.reshape(b, t, self.heads, d // self.heads) for y in (q, k, v))
    a = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    x = x + self.out(a.reshape(b, t, d))
    return x + self.proj(jax.nn.gelu(self.fc(self.ln2(x))))


class TransformerLM(nnx.Module):
  """A GPT-style decoder with a tied output head (logits = h @ embedding.T)."""

  def __init__(
    self, layers: int, d: int, vocab: int, context: int, heads: int, rngs: nnx.Rngs
  ):
    self.embed = nnx.Embed(vocab, d, rngs=rngs)
    self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (context, d)))
    self.blocks = nnx.List([Block(d, heads, rngs) for _ in range(layers)])
    self.ln = nnx.LayerNorm(d, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens) + self.pos[: tokens.shape[1]]
    for block in self.blocks:
      x = block(x)
    return self.embed.attend(self.ln(x))


class ResidualBlock(nnx.Module):
  """ResNet's basic block: two 3x3 convs with batchnorm, a 1x1 shortcut where
  the shape changes."""

  def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs):
    conv = dict(use_bias=False, rngs=rngs)
    self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, **conv)
    self.bn1 = nnx.BatchNorm(cout, rngs=rngs)
    self.conv2 = nnx.Conv(cout, cout, (3, 3), **conv)
    self.bn2 = nnx.BatchNorm(cout, rngs=rngs)
    self.has_short = stride != 1 or cin != cout
    if self.has_short:
      self.short = nnx.Conv(cin, cout, (1, 1), strides=stride, **conv)
      self.short_bn = nnx.BatchNorm(cout, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.has_short:
      x = self.short_bn(self.short(x))
    return nnx.relu(x + y)


class ResNet(nnx.Module):
  """ResNet-18's layout (He et al. 2016; 2 basic blocks per stage) for small
  images, in Flax's conv layout: kernels (kh, kw, in, out)."""

  def __init__(self, width: int, classes: int, rngs: nnx.Rngs):
    self.stem = nnx.Conv(3, width, (3, 3), use_bias=False, rngs=rngs)
    self.stem_bn = nnx.BatchNorm(width, rngs=rngs)
    blocks, cin = [], width
    for stage in range(4):
      cout = width * 2**stage
      for b in range(2):
        blocks.append(ResidualBlock(cin, cout, 2 if b == 0 and stage else 1, rngs))
        cin = cout
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(cin, classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.stem_bn(self.stem(x)))
    for block in self.blocks:
      x = block(x)
    return self.head(x.mean(axis=(1, 2)))


class MLP(nnx.Module):
  """`layers` dense layers of `width` units: many small leaves."""

  def __init__(self, layers: int, width: int, classes: int, rngs: nnx.Rngs):
    self.layers = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(layers)])
    self.head = nnx.Linear(width, classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers:
      x = nnx.relu(layer(x))
    return self.head(x)


# ---------------------------------------------------------------------------
# Specs: a model, its batch, its loss.


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One benchmark model: `build()` makes the NNX module, `batch()` its
  (inputs, labels) as numpy arrays (fixed seed), `description` says what it is."""

  name: str
  description: str
  build: Callable[[], nnx.Module]
  batch: Callable[[], tuple[np.ndarray, np.ndarray]]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy over every position, in float32."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.take_along_axis(logp, labels[..., None], axis=-1).mean()


def transformer(
  layers: int, d: int, vocab: int, context: int, batch: int, heads: int = 8
) -> ModelSpec:
  def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, (batch, context + 1), dtype=np.int32)
    return tokens[:, :-1], tokens[:, 1:]

  return ModelSpec(
    "transformer_lm",
    f"transformer LM (TransformerLM): {layers} layers, d={d}, {heads} heads, "
    f"4x MLP, vocabulary {vocab} (tied head), context {context}, batch {batch} "
    "of random tokens",
    lambda: TransformerLM(layers, d, vocab, context, heads, nnx.Rngs(0)),
    data,
  )


def resnet(width: int, image: int, classes: int, batch: int) -> ModelSpec:
  def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, image, image, 3), dtype=np.float32)
    return x, rng.integers(0, classes, (batch,), dtype=np.int32)

  return ModelSpec(
    "resnet_cnn",
    f"ResNet-18-style CNN (ResNet): 4 stages of 2 basic blocks, width {width}, "
    f"nnx.Conv kernels (kh,kw,in,out), nnx.BatchNorm in training mode, "
    f"{image}x{image}x3 inputs, {classes} classes, batch {batch}",
    lambda: ResNet(width, classes, nnx.Rngs(0)),
    data,
  )


def mlp(layers: int, width: int, classes: int, batch: int) -> ModelSpec:
  def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, width), dtype=np.float32)
    return x, rng.integers(0, classes, (batch,), dtype=np.int32)

  return ModelSpec(
    "mlp_many_leaves",
    f"MLP (MLP): {layers} nnx.Linear layers {width} wide (+ a head), "
    f"{2 * layers + 2} leaves, batch {batch}",
    lambda: MLP(layers, width, classes, nnx.Rngs(0)),
    data,
  )


@dataclasses.dataclass(frozen=True)
class Scale:
  """Model sizes and timing rounds of one run."""

  models: tuple[ModelSpec, ...]
  update_leaf: int  # elements of the "update alone" leaf
  rounds: int  # interleaved timing rounds
  samples: int  # timed steps per row per round


def scales() -> dict[str, Scale]:
  return {
    "full": Scale(
      models=(
        transformer(layers=2, d=1024, vocab=8192, context=128, batch=1),
        resnet(width=64, image=32, classes=10, batch=8),
        mlp(layers=40, width=256, classes=10, batch=64),
      ),
      update_leaf=4 * 2**20,
      rounds=2,
      samples=1,
    ),
    "quick": Scale(
      models=(
        transformer(layers=1, d=64, vocab=128, context=16, batch=2, heads=4),
        resnet(width=4, image=8, classes=10, batch=2),
        mlp(layers=4, width=32, classes=10, batch=8),
      ),
      update_leaf=65536,
      rounds=1,
      samples=1,
    ),
  }


def param_count(params: Any) -> int:
  """Elements of every leaf of a parameter tree."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
