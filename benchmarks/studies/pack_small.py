"""Sweep optax_rms.pack_small's thresholds on one tree: step time per setting.

Question: which (max_size, max_leaves) a device wants (H200, ResNet-50: pack
every leaf; the defaults were chosen on the CPU; docs/performance_findings.md).

On trees of many small leaves a jitted step is bound by kernels per leaf, not
bytes (docs/performance_findings.md). `optax_rms.pack_small(inner, max_size,
max_leaves)` packs the state of leaves of at most `max_size` elements into
flat vectors of at most `max_leaves` leaves; `optax.flatten` packs every leaf
into one. This script times ours, optax.flatten(ours) and pack_small(ours) at
each (max_size, max_leaves) asked for, alternated in one process, and checks
that every packed step equals the leafwise one. Use it to choose the defaults
on a new device (they were chosen on a CPU):

  python -m benchmarks.studies.pack_small --tree resnet50_like --variants plain,momentum
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_rms

from ..step import run as step


def main() -> None:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.studies.pack_small", description=__doc__.splitlines()[0]
  )
  parser.add_argument("--tree", default="resnet50_like")
  parser.add_argument("--variants", default="plain,centered+momentum")
  parser.add_argument("--sizes", default="4096,65536,1048576", help="max_size values")
  parser.add_argument("--leaves", default="32", help="max_leaves values")
  parser.add_argument("--scale", default="full")
  args = parser.parse_args()
  scale = step.SCALES[args.scale]
  tree = step.trees(scale)[args.tree]
  np_params, np_grads = step._random_arrays(tree)
  grads = step._nest({k: jnp.asarray(v) for k, v in np_grads.items()})
  sizes = [int(s) for s in args.sizes.split(",")]
  counts = [int(c) for c in args.leaves.split(",")]
  print(
    f"{tree.name}: {tree.n_params:,} params, {len(tree.shapes)} leaves, on "
    f"{jax.devices()[0].device_kind}"
  )
  for size in sizes:
    n_small = sum(math.prod(s) <= size for s in tree.shapes.values())
    print(f"  max_size {size}: {n_small} leaves packed")
  for vname in args.variants.split(","):
    variant = step.VARIANTS[vname]

    def ours(variant=variant):
      return optax_rms.rmsprop(step.LR, step.DECAY, step.EPS, **variant)

    txs = {"ours": ours(), "optax.flatten(ours)": optax.flatten(ours())}
    txs |= {
      f"pack_small(ours, {s}, {c})": optax_rms.pack_small(
        ours(), max_size=s, max_leaves=c
      )
      for s in sizes
      for c in counts
    }
    # Every packed step equals the leafwise one (elementwise math, same order).
    params = step._nest({k: jnp.asarray(v) for k, v in np_params.items()})
    want, _ = jax.jit(txs["ours"].update)(grads, txs["ours"].init(params), params)
    for name, tx in txs.items():
      got, _ = jax.jit(tx.update)(grads, tx.init(params), params)
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(
          np.asarray(a), np.asarray(b), rtol=2e-6, err_msg=name
        )
    impls = {}
    for name, tx in txs.items():
      params = step._nest({k: jnp.asarray(v) for k, v in np_params.items()})
      impls[name], _ = step.jax_runner(tx, params, grads, hlo_model=False)
    samples, m = step.alternate(impls, scale)
    base = min(samples["ours"])
    for name in impls:
      best, med = min(samples[name]), sorted(samples[name])[len(samples[name]) // 2]
      print(
        f"  {vname:18s} {name:28s} best {best * 1e3:8.3f} ms  median "
        f"{med * 1e3:8.3f} ms  vs ours {best / base:5.2f}  (m={m[name]})"
      )


if __name__ == "__main__":
  main()
