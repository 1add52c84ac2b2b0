"""python -m benchmarks.offload [--layers ...]: see run.main."""

from .run import main

main()
