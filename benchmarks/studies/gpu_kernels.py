"""Kernel-level profile of one optimizer step on a GPU: kernels, busy time, gaps.

Question: why is a step on a GPU far from the memory roofline on trees of
many leaves? (H200: the host's cost per array, not the kernels;
docs/performance_findings.md, "GPUs".)

benchmarks/step times whole steps. Where a step on a GPU is far from the memory
roofline (ResNet-50: ~25M params in 161 leaves), this script says where the
time goes: for ours, pack_small(ours), optax and torch's foreach RMSprop it
records every CUDA kernel that n steps launch, with torch.profiler (CUPTI
records the kernels of the whole process, JAX's too), and prints per step:
kernels, the time the GPU spends inside them (busy: their union), the wall
time of the steps queued back to back (timed apart, without the profiler), and
the three kernels that take the most time. wall >> busy means the step waits
on launches, not on memory.

  python -m benchmarks.studies.gpu_kernels --tree resnet50_like \
    --variants plain,momentum
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

import jax
import jax.numpy as jnp
import optax

import optax_rms

from ..step import run as step


def kernel_stats(events: list, steps: int) -> dict:
  """Per-step kernel count, summed and union (busy) time, and top kernels from
  (name, start_us, end_us) intervals."""
  events = sorted(events, key=lambda e: e[1])
  busy, end = 0.0, float("-inf")
  for _, start, stop in events:  # union of the intervals
    if stop > end:
      busy += stop - max(start, end)
      end = stop
  by_name: dict[str, float] = collections.Counter()
  for name, start, stop in events:
    by_name[name] += stop - start
  top = sorted(by_name.items(), key=lambda kv: -kv[1])[:3]
  return {
    "kernels": len(events) / steps,
    "kernel_us": sum(e[2] - e[1] for e in events) / steps,
    "busy_us": busy / steps,
    "top": [(name[:60], t / steps) for name, t in top],
  }


def profile(run, steps: int) -> dict:
  """Kernels of `steps` queued steps under torch.profiler, and the wall time
  per step of the same number of steps without it (best of three)."""
  import torch
  from torch.profiler import ProfilerActivity
  from torch.profiler import profile as torch_profile

  for i in range(3):  # compiled, warm
    run(i == 2)
  walls = []
  for _ in range(3):
    t0 = time.perf_counter()
    for i in range(steps):
      run(i == steps - 1)
    walls.append((time.perf_counter() - t0) / steps)
  with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
    for i in range(steps):
      run(i == steps - 1)
    torch.cuda.synchronize()
  events = [
    (e.name, e.time_range.start, e.time_range.end)
    for e in prof.events()
    if e.device_type == torch.autograd.DeviceType.CUDA
  ]
  return {"wall_us": min(walls) * 1e6, **kernel_stats(events, steps)}


def main() -> None:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.studies.gpu_kernels", description=__doc__.splitlines()[0]
  )
  parser.add_argument("--tree", default="resnet50_like")
  parser.add_argument("--variants", default="plain,momentum")
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()
  device, why = step.torch_device()
  if device != "cuda":
    sys.exit(f"gpu_kernels.py needs JAX and torch on a GPU: torch rows {why}")
  tree = step.trees(step.SCALES["full"])[args.tree]
  np_params, np_grads = step._random_arrays(tree)
  grads = step._nest({k: jnp.asarray(v) for k, v in np_grads.items()})
  print(
    f"{tree.name}: {tree.n_params:,} params, {len(tree.shapes)} leaves, on "
    f"{jax.devices()[0].device_kind}; per step, {args.steps} steps queued"
  )
  for vname in args.variants.split(","):
    variant = step.VARIANTS[vname]
    args_ = (step.LR, step.DECAY, step.EPS)
    txs = {
      "ours": optax_rms.rmsprop(*args_, **variant),
      step.PACKED: optax_rms.pack_small(optax_rms.rmsprop(*args_, **variant)),
      "optax": optax.rmsprop(*args_, **variant),
    }
    impls = {}
    for name, tx in txs.items():
      params = step._nest({k: jnp.asarray(v) for k, v in np_params.items()})
      impls[name], _ = step.jax_runner(tx, params, grads, hlo_model=False)
    torch_impls, _ = step.torch_runners(
      [np_params[k] for k in tree.shapes],
      [np_grads[k] for k in tree.shapes],
      tree.dtype,
      variant,
      device,
    )
    impls["torch foreach"] = torch_impls["torch foreach"]
    for name, run in impls.items():
      s = profile(run, args.steps)
      top = "; ".join(f"{n} {t:.0f}" for n, t in s["top"])
      print(
        f"  {vname:18s} {name:18s} wall {s['wall_us']:7.0f} us  kernels "
        f"{s['kernels']:5.0f}  in kernels {s['kernel_us']:7.0f} us  busy "
        f"{s['busy_us']:7.0f} us ({s['busy_us'] / s['wall_us']:4.0%})  top: {top}"
      )


if __name__ == "__main__":
  main()
