"""optax_rms's benchmarks: maintained suites (one folder each, each with a
smoke test in tests/), one-question studies (studies/), and their results by
machine (results/<machine>/). Run from the repository root as
``python -m benchmarks.<suite>``; README.md lists them."""
