"""python -m benchmarks.train_step [--quick] [--out FILE]: see run.main."""

import os

# A child process per row measures the device's own peak (GPUs): JAX must not
# take most of the device's memory up front in the parent, nor in a child.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from .run import main  # noqa: E402 - after the environment is set

main()
