"""Step benchmark: one jitted RMSprop step of optax_rms against optax.rmsprop
and torch.optim.RMSprop, per tree and variant.

Run from the repository root: ``python -m benchmarks.step [--quick]``.
Modules: ``run`` (trees, timing, the sections, the command line), ``report``
(the Markdown report with its targets, and the chart).
"""
