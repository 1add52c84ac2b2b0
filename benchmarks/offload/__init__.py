"""Host-offload benchmark: the device's peak memory and the step time with
the optimizer state on the device and in pinned host memory
(``optax_rms.host_offload``). Run: ``python -m benchmarks.offload``."""
