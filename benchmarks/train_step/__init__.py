"""Whole-train-step benchmark: step time and peak memory per optimizer.

Run from the repository root: ``python -m benchmarks.train_step`` (writes
benchmarks/results/<machine>/train_step.md; ``--quick``: tiny models, one
round, printed). How it measures: docs/performance_findings.md, "Train step".

Modules, one concern each: ``harness`` (interleaved timing, XLA's memory
analysis, the device's peak), ``models`` (the Flax NNX models and scales),
``rows`` (the optimizers, one line each), ``sections/`` (one file per
section), ``report`` (Markdown with the targets MET/MISSED), ``run`` (the
command line).
"""
