"""Experiment: pack the small leaves' state into one flat vector.

Not part of optax_rms. On trees with many small leaves the step is bound by
kernels per leaf, not bytes (benchmarks/README.md): ResNet-50 on an H100 takes
1.34 ms where its bytes stream in 0.19 ms, and torch's foreach step (one
kernel for many tensors) is faster. `optax.flatten` packs *every* leaf, which
wins on 1000 small leaves and loses on ResNet-50 on the CPU (concatenating and
slicing the big conv kernels each step costs more than it saves).
`pack_small(inner, max_size)` packs only the leaves of at most `max_size`
elements (the batchnorm vectors and biases), and leaves the big ones alone.

This script times ours, optax.flatten(ours) and pack_small(ours) at a few
thresholds on a tree from bench_step.py, alternated, in one process, and
checks that every packed step equals the leafwise one. Run it on a GPU lease
before changing the library's state layout:

  python benchmarks/pack_small.py --tree resnet50_like --variants plain,momentum
"""

from __future__ import annotations

import argparse
import math
import sys
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_rms

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import bench_step  # noqa: E402  (beside this file)


class Packed(NamedTuple):
  large: list[jax.Array]  # the leaves above max_size, as they are
  small: jax.Array  # the others, raveled and concatenated (one dtype)


def pack_small(
  inner: optax.GradientTransformation, max_size: int
) -> optax.GradientTransformation:
  """inner applied to a tree whose leaves of <= max_size elements are packed
  into one flat vector. For elementwise transformations only (as
  optax.flatten), and for trees of one floating dtype (an experiment)."""

  def split(tree: Any) -> tuple[Packed, Any]:
    leaves, treedef = jax.tree.flatten(tree)
    small = [i for i, x in enumerate(leaves) if x.size <= max_size]
    large = [i for i, x in enumerate(leaves) if x.size > max_size]
    flat = (
      jnp.concatenate([leaves[i].reshape(-1) for i in small])
      if small
      else jnp.zeros((0,), leaves[0].dtype)
    )
    layout = (treedef, small, large, [leaves[i].shape for i in small])
    return Packed([leaves[i] for i in large], flat), layout

  def join(packed: Packed, layout: Any) -> Any:
    treedef, small, large, shapes = layout
    leaves: list[Any] = [None] * (len(small) + len(large))
    for i, x in zip(large, packed.large, strict=True):
      leaves[i] = x
    offset = 0
    for i, shape in zip(small, shapes, strict=True):
      size = math.prod(shape)
      leaves[i] = packed.small[offset : offset + size].reshape(shape)
      offset += size
    return jax.tree.unflatten(treedef, leaves)

  def init(params):
    return inner.init(split(params)[0])

  def update(updates, state, params=None):
    packed, layout = split(updates)
    packed_params = None if params is None else split(params)[0]
    new, state = inner.update(packed, state, packed_params)
    return join(new, layout), state

  return optax.GradientTransformation(init, update)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tree", default="resnet50_like")
  parser.add_argument("--variants", default="plain,centered+momentum")
  parser.add_argument("--sizes", default="2048,65536", help="max_size values")
  parser.add_argument("--scale", default="full")
  args = parser.parse_args()
  scale = bench_step.SCALES[args.scale]
  tree = bench_step.trees(scale)[args.tree]
  np_params, np_grads = bench_step._random_arrays(
    tree, seed=zlib.crc32(tree.name.encode())
  )
  grads = bench_step._nest({k: jnp.asarray(v) for k, v in np_grads.items()})
  sizes = [int(s) for s in args.sizes.split(",")]
  print(
    f"{tree.name}: {tree.n_params:,} params, {len(tree.shapes)} leaves, on "
    f"{jax.devices()[0].device_kind}"
  )
  for size in sizes:
    n_small = sum(math.prod(s) <= size for s in tree.shapes.values())
    print(f"  max_size {size}: {n_small} leaves packed")
  for vname in args.variants.split(","):
    variant = bench_step.VARIANTS[vname]

    def ours(variant=variant):
      return optax_rms.rmsprop(
        bench_step.LR, bench_step.DECAY, bench_step.EPS, **variant
      )

    txs = {"ours": ours(), "optax.flatten(ours)": optax.flatten(ours())}
    txs |= {f"pack_small(ours, {s})": pack_small(ours(), s) for s in sizes}
    # Every packed step equals the leafwise one (elementwise math, same order).
    params = bench_step._nest({k: jnp.asarray(v) for k, v in np_params.items()})
    want, _ = jax.jit(txs["ours"].update)(grads, txs["ours"].init(params), params)
    for name, tx in txs.items():
      got, _ = jax.jit(tx.update)(grads, tx.init(params), params)
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(
          np.asarray(a), np.asarray(b), rtol=2e-6, err_msg=name
        )
    impls = {}
    for name, tx in txs.items():
      params = bench_step._nest({k: jnp.asarray(v) for k, v in np_params.items()})
      impls[name], _ = bench_step.jax_runner(tx, params, grads, hlo_model=False)
    samples, m = bench_step.alternate(impls, scale)
    base = min(samples["ours"])
    for name in impls:
      best, med = min(samples[name]), sorted(samples[name])[len(samples[name]) // 2]
      print(
        f"  {vname:18s} {name:28s} best {best * 1e3:8.3f} ms  median "
        f"{med * 1e3:8.3f} ms  vs ours {best / base:5.2f}  (m={m[name]})"
      )


if __name__ == "__main__":
  main()
