"""Pytest setup shared by tests/ and the doctests in optax_rms/.

It lives at the repository root, not in tests/, because pytest loads a
conftest.py only for the directories it collects from: a root conftest is
imported before any test module or doctest (testpaths = tests, optax_rms), so
the device count below is set before any JAX array exists. JAX reads it once,
when the CPU backend starts; after that the update has no effect.
"""

import os

# Keras (an optional parity peer, tests/test_compat.py) runs on its JAX backend
# here: the suite then needs no TensorFlow. Set before anything imports keras.
os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402

# 8 simulated CPU devices for the pmap / sharding tests (tests/test_transforms.py).
jax.config.update("jax_num_cpu_devices", 8)
