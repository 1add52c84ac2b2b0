"""python -m benchmarks.step [--quick] [--out FILE]: see run.main."""

from .run import main

main()
