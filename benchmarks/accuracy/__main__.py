"""python -m benchmarks.accuracy [--sections ...]: see run.main."""

from .run import main

main()
