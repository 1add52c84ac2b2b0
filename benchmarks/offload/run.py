"""Optimizer state in host memory (optax_rms.host_offload): memory and time.

On a parameter tree of a transformer LM's shapes (default: 2 layers,
d_model 1024, vocab 256: 25.2M float32 parameters), a jitted train step
(forward and backward of a residual stack that uses every matrix, then
``optax_rms.rmsprop(centered=True, momentum=0.9)``: 3 state buffers), donated
and with out_shardings, is run with the state on the device and with it
offloaded. Each mode runs in a fresh subprocess, so that the device's peak
memory (``device.memory_stats()["peak_bytes_in_use"]``, where the backend has
it) is that mode's alone. Reported:

* the compiled step's memory analysis (device bytes; host bytes apart where the
  backend counts them) and the measured device peak, with and without offload:
  the state's bytes should leave the device;
* the host<->device bandwidth, measured by ``jax.device_put`` of a state-sized
  array between the ``device`` and ``pinned_host`` memories, each way;
* the step time of both modes and the overhead against the bound of moving
  the state both ways, ``S / B_h2d + S / B_d2h`` (``2 S / B`` for one ``B``);
* optionally (``--profile DIR``) a ``jax.profiler`` trace of a few offloaded
  steps, to see whether the copies overlap the backward pass.

On the CPU "host" and "device" memory are the same RAM: the figures show the
mechanics only. Run it on a GPU for the real cost (from the repository root;
the report goes to benchmarks/results/<machine>/offload.md)::

    python -m benchmarks.offload
    python -m benchmarks.offload --layers 2 --d-model 1024 --tokens 2048 \\
      --profile /tmp/offload_trace
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import SingleDeviceSharding

import optax_rms

from ..harness import ROOT, machine_info, results_path

HOST = "pinned_host"


def lm_params(layers: int, d_model: int, vocab: int) -> dict[str, Any]:
  """Arrays of a GPT-style LM's shapes (float32, small random values; NumPy's
  generator: no compile per shape)."""
  d, rng = d_model, np.random.default_rng(0)
  shapes: dict[str, tuple[int, ...]] = {"embed": (vocab, d), "ln_f": (d,)}
  for i in range(layers):
    shapes |= {
      f"layer{i}.ln1": (d,),
      f"layer{i}.qkv": (d, 3 * d),
      f"layer{i}.attn_out": (d, d),
      f"layer{i}.ln2": (d,),
      f"layer{i}.mlp_in": (d, 4 * d),
      f"layer{i}.mlp_in_bias": (4 * d,),
      f"layer{i}.mlp_out": (4 * d, d),
    }
  return {
    name: (0.02 * rng.standard_normal(shape)).astype(np.float32)
    for name, shape in shapes.items()
  }


def loss_fn(params: dict[str, Any], tokens: jax.Array, layers: int) -> jax.Array:
  """A residual stack that touches every parameter (no attention softmax: the
  point is a real backward pass of the LM's matmuls, not the model)."""
  h = params["embed"][tokens]
  d = h.shape[-1]
  for i in range(layers):
    p = lambda name, i=i: params[f"layer{i}.{name}"]
    x = h * p("ln1")
    q, k, v = jnp.split(x @ p("qkv"), 3, axis=-1)
    h = h + (jnp.tanh(q * k / d**0.5) * v) @ p("attn_out")
    x = h * p("ln2")
    h = h + jax.nn.gelu(x @ p("mlp_in") + p("mlp_in_bias")) @ p("mlp_out")
  logits = (h * params["ln_f"]) @ params["embed"].T
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()


def _state_bytes(state: Any) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(state))


def _median_time(fn: Any, reps: int) -> float:
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bandwidth(n_bytes: int, reps: int) -> dict[str, float]:
  """Bytes/s of device_put between device and pinned_host memory, each way."""
  device = SingleDeviceSharding(jax.devices()[0])
  x = jax.device_put(jnp.ones(n_bytes // 4, jnp.float32), device)
  on_host = jax.block_until_ready(jax.device_put(x, device.with_memory_kind(HOST)))
  to_host = lambda: jax.device_put(x, device.with_memory_kind(HOST))
  to_device = lambda: jax.device_put(on_host, device)
  jax.block_until_ready((to_host(), to_device()))  # warm up
  return {
    "h2d_bytes_per_s": x.nbytes / _median_time(to_device, reps),
    "d2h_bytes_per_s": x.nbytes / _median_time(to_host, reps),
  }


def run_mode(args: argparse.Namespace) -> dict[str, Any]:
  """One mode ("device" or "offload") in this process; a dict of figures."""
  inner = optax_rms.rmsprop(1e-3, centered=True, momentum=0.9)
  tx = optax_rms.host_offload(inner) if args.mode == "offload" else inner
  device = SingleDeviceSharding(jax.devices()[0])
  params = jax.device_put(lm_params(args.layers, args.d_model, args.vocab), device)
  state = tx.init(params)
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, args.vocab, args.tokens))

  def step(params, state, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens, args.layers)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  step = jax.jit(
    step,
    out_shardings=(device, state_sh, device),  # donation matches memory kinds
    donate_argnums=(0, 1),
  )
  compiled = step.lower(params, state, tokens).compile()
  memory = compiled.memory_analysis()
  analysis = {
    k: getattr(memory, k)
    for k in (
      "argument_size_in_bytes",
      "output_size_in_bytes",
      "alias_size_in_bytes",
      "temp_size_in_bytes",
      "host_argument_size_in_bytes",
      "host_output_size_in_bytes",
      "host_alias_size_in_bytes",
      "host_temp_size_in_bytes",
    )
  }
  analysis["peak_memory_in_bytes"] = getattr(memory, "peak_memory_in_bytes", None)
  hlo = compiled.as_text()
  for _ in range(args.warmup):
    params, state, loss = step(params, state, tokens)
  jax.block_until_ready(loss)
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    params, state, loss = step(params, state, tokens)
    jax.block_until_ready((params, state))
    times.append(time.perf_counter() - start)
  if args.profile and args.mode == "offload":
    with jax.profiler.trace(args.profile):
      for _ in range(3):
        params, state, loss = step(params, state, tokens)
      jax.block_until_ready((params, state))
  stats = jax.devices()[0].memory_stats() or {}
  return {
    "mode": args.mode,
    "n_params": sum(x.size for x in jax.tree.leaves(params)),
    "state_bytes": _state_bytes(state),
    "state_memory_kinds": sorted(
      {x.sharding.memory_kind for x in jax.tree.leaves(state)}
    ),
    "analysis": analysis,
    "device_peak_bytes": stats.get("peak_bytes_in_use"),
    "step_s_median": statistics.median(times),
    "step_s_min": min(times),
    "loss": float(loss),
    # Copies between memory spaces in the compiled step (GPU: copy-start/-done
    # or dynamic-update-slices annotated with S(5); none on the CPU).
    "hlo_host_annotations": hlo.count("S(5)"),
    "bandwidth": bandwidth(_state_bytes(state), args.bandwidth_reps)
    if args.mode == "offload"
    else None,
  }


def _gib(n: float | None) -> str:
  return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def render(device: dict[str, Any], offload: dict[str, Any], args: Any) -> str:
  s = offload["state_bytes"]
  bw = offload["bandwidth"]
  bound = s / bw["h2d_bytes_per_s"] + s / bw["d2h_bytes_per_s"]
  overhead = offload["step_s_median"] - device["step_s_median"]
  dev0 = jax.devices()[0]
  lines = [
    "# host_offload: optimizer state in pinned host memory",
    "",
    f"Backend {dev0.platform} ({dev0.device_kind}), jax {jax.__version__}, "
    f"{platform.machine()}, {os.cpu_count()} CPUs visible.",
    f"Command: `python -m benchmarks.offload {' '.join(sys.argv[1:])}`",
    "",
    f"LM-shaped tree: {args.layers} layers, d_model {args.d_model}, vocab "
    f"{args.vocab}: {device['n_params'] / 1e6:.1f}M float32 parameters; "
    "`optax_rms.rmsprop(centered=True, momentum=0.9)` (3 buffers); "
    f"{args.tokens} tokens per step; state S = {_gib(s)}.",
    "",
    "| | state on device | state offloaded |",
    "|---|---|---|",
  ]
  rows = [
    ("state memory kinds", "state_memory_kinds"),
  ]
  for label, key in rows:
    lines.append(f"| {label} | {device[key]} | {offload[key]} |")
  for key in (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "temp_size_in_bytes",
    "peak_memory_in_bytes",
    "host_argument_size_in_bytes",
    "host_output_size_in_bytes",
    "host_alias_size_in_bytes",
  ):
    lines.append(
      f"| compiled `{key}` | {_gib(device['analysis'][key])} | "
      f"{_gib(offload['analysis'][key])} |"
    )
  lines += [
    f"| measured device peak (`peak_bytes_in_use`) | "
    f"{_gib(device['device_peak_bytes'])} | {_gib(offload['device_peak_bytes'])} |",
    f"| `S(5)` (host memory space) annotations in the HLO | "
    f"{device['hlo_host_annotations']} | {offload['hlo_host_annotations']} |",
    f"| step time, median of {args.steps} (min) | "
    f"{device['step_s_median'] * 1e3:.1f} ms ({device['step_s_min'] * 1e3:.1f}) | "
    f"{offload['step_s_median'] * 1e3:.1f} ms ({offload['step_s_min'] * 1e3:.1f}) |",
    f"| loss after the steps | {device['loss']:.6f} | {offload['loss']:.6f} |",
    "",
    f"Host<->device bandwidth (device_put of S bytes, median of "
    f"{args.bandwidth_reps}): host->device "
    f"{bw['h2d_bytes_per_s'] / 1e9:.2f} GB/s, device->host "
    f"{bw['d2h_bytes_per_s'] / 1e9:.2f} GB/s.",
    "",
    f"Step overhead of offloading: {overhead * 1e3:.1f} ms; bound "
    f"S/B_h2d + S/B_d2h = {bound * 1e3:.1f} ms (overhead / bound = "
    f"{overhead / bound:.2f}).",
  ]
  if dev0.platform == "cpu":
    lines += [
      "",
      "**CPU: the mechanics only.** The CPU's `device` and `pinned_host` "
      "memories are the same RAM, and jax 0.10 lowers a `device_put` between "
      "them inside `jit` to nothing on the CPU (only GPU and TPU get the copy), "
      "so the offloaded step does the device-resident step's work: the overhead "
      "is noise, and the bound (from standalone `device_put` copies, which do "
      "copy) does not apply. The compiled figures count one memory, host and "
      "device alike (the `host_*` fields stay 0); what shows the offload is the "
      "state's memory kind and the `S(5)` (host memory space) layouts of the "
      "step's state arguments and outputs, and the aliased bytes (donation). "
      "Timings are noisy: 2 shared cores, other jobs running. No GPU was lent "
      "to this task: run the script on one for the real figures.",
    ]
  if args.profile:
    lines.append(f"\nProfile of 3 offloaded steps: `{args.profile}` (TensorBoard).")
  return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.offload", description=__doc__.splitlines()[0]
  )
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--d-model", type=int, default=1024)
  parser.add_argument("--vocab", type=int, default=256)
  parser.add_argument("--tokens", type=int, default=512, help="tokens per step")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--bandwidth-reps", type=int, default=10)
  parser.add_argument("--profile", default=None, help="trace directory")
  parser.add_argument(
    "--out",
    "--output",
    dest="output",
    help="write the markdown here (default: benchmarks/results/<machine>/offload.md)",
  )
  parser.add_argument("--mode", choices=("device", "offload"), default=None)
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
  args = parse_args(argv)
  if args.mode is not None:  # a child: one mode, JSON on the last line
    print(json.dumps(run_mode(args)))
    return None
  argv = list(sys.argv[1:] if argv is None else argv)
  results = {}
  for mode in ("device", "offload"):
    out = subprocess.run(
      [sys.executable, "-m", "benchmarks.offload", *argv, f"--mode={mode}"],
      check=True,
      cwd=ROOT,
      capture_output=True,
      text=True,
    )
    results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
  text = render(results["device"], results["offload"], args)
  print(text)
  path = args.output or results_path(machine_info(), "offload.md")
  with open(path, "w") as f:
    f.write(text)
  return results
