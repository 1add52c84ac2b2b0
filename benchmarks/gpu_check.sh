#!/usr/bin/env bash
# The GPU checks, in one go, for a machine lent with a GPU (JAX with CUDA,
# torch with CUDA, optax and flax already installed there; this repository
# copied in, not installed). Writes into the folder given (default ./gpu-out):
#   gpu.txt            the card and the versions
#   step.md, step.png, bench.json, bench.log   the step benchmark (benchmarks/step)
#   pytest.log         the test suite with JAX on the GPU (the 8-device tests
#                      skip: they need the CPU backend's simulated devices)
#   kernels.log        studies/gpu_kernels.py: kernels per step, the time
#                      inside them and the wall time, ours / pack_small / optax / torch foreach
#   pack_small.log     studies/pack_small.py: its thresholds swept on ResNet-50
# Each step has its own time limit, so one that overruns leaves the others; a
# limit of 0 skips that step. On one H200 (2026-11-26, fifth session), in
# seconds: resnet50_like 54, many_small 205, compile 78 with --compile-reps 1,
# resnet50_flax 50, bf16_big_leaf 23, roofline 10, one_big_leaf 22; the tests
# 66 s; the two studies ~50 s each. Not yet timed there: transformer_like,
# states, eager. On one H100 (2026-11-26) the sections took, in
# seconds: roofline 9, one_big_leaf 19, resnet50_like 34-44, many_small 166,
# transformer_like 35-43, bf16_big_leaf 18, states 22, eager 66, compile not
# yet measured; the tests 75 s with 14 workers. Since then the ResNet,
# many-leaf and transformer sections also time pack_small(ours), and compile
# times four implementations (optax.flatten's compiles slowly: 8.5 s each on
# the CPU), and resnet50_flax (Flax's conv layout; about as long as
# resnet50_like) is new. The whole suite does not fit one 10-minute call: in
# a short lease run what is missing first, e.g. (after the H200 lease)
#   BENCH_SECTIONS=tree:bf16_big_leaf,tree:transformer_like,states,eager \
#     bash benchmarks/gpu_check.sh OUT 300 150
# BENCH_ARGS adds flags to benchmarks.step (e.g. --compile-reps 1 where time is
# short). The last two scripts share EXTRA_LIMIT_S, half each (default 0: off).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR] [BENCH_LIMIT_S] [TEST_LIMIT_S] [EXTRA_LIMIT_S]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-out}
bench_limit=${2:-330}
test_limit=${3:-220}
extra_limit=${4:-0}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem \
    --format=csv
  python3 -c 'import jax, optax, flax, torch
print("jax", jax.__version__, "optax", optax.__version__, "flax", flax.__version__,
      "torch", torch.__version__, jax.devices())'
} 2>&1 | tee "$out/gpu.txt"

# Leave torch room beside JAX's preallocated pool (the torch rows run on CUDA).
# bench.json is rewritten after each section: a run cut short keeps what it
# measured (benchmarks/step/report.py renders it). BENCH_SECTIONS picks and
# orders them. Copy what is worth keeping to benchmarks/results/<card>/.
if [ "$bench_limit" -gt 0 ]; then
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 timeout "$bench_limit" \
    python3 -m benchmarks.step --out "$out/step.md" \
    ${BENCH_SECTIONS:+--sections "$BENCH_SECTIONS"} ${BENCH_ARGS:-} \
    --png "$out/step.png" --json "$out/bench.json" 2>&1 | tee "$out/bench.log"
  echo "bench exit status ${PIPESTATUS[0]}"
fi

# Several workers share the GPU: each allocates only what it uses.
# -p no:benchmark: pytest-benchmark, where installed, warns under xdist, and
# the suite turns warnings into errors. -v: a run cut short still lists every
# outcome so far in pytest.log.
if [ "$test_limit" -gt 0 ]; then
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "$test_limit" \
    python3 -m pytest -v -n 14 -p no:cacheprovider -p no:benchmark \
    --durations=10 2>&1 | tee "$out/pytest.log" | grep -v " PASSED " | tail -40
  echo "pytest exit status ${PIPESTATUS[0]}"
fi

if [ "$extra_limit" -gt 0 ]; then
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 timeout $((extra_limit / 2)) \
    python3 -m benchmarks.studies.gpu_kernels --tree resnet50_like \
    --variants plain,momentum \
    2>&1 | tee "$out/kernels.log"
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 timeout $((extra_limit / 2)) \
    python3 -m benchmarks.studies.pack_small --tree resnet50_like \
    --variants plain,momentum \
    --sizes 65536,4194304 --leaves 32,256 2>&1 | tee "$out/pack_small.log"
fi
