"""Accuracy benchmark: the lean state modes (bfloat16, 8-bit) against float32
state on real tasks (digits CNN, character-level LM) and on a noisy
quadratic's trajectory. Run: ``python -m benchmarks.accuracy``."""
