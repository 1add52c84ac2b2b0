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


N_DEVICES = 8
_ONE_ACCELERATOR = (
  "needs 8 devices of one platform: the 8 simulated CPU devices above serve "
  "only when JAX's default backend is the CPU (on a GPU machine run these with "
  "JAX_PLATFORMS=cpu)"
)


def pytest_collection_modifyitems(config, items):
  """Skips the multidevice tests where the default backend has fewer devices
  (a machine with one GPU); everywhere else they run."""
  del config
  import pytest

  if jax.device_count() >= N_DEVICES:
    return
  skip = pytest.mark.skip(reason=_ONE_ACCELERATOR)
  for item in items:
    # The sharding docstrings build meshes of 8 devices; a doctest takes no
    # marker, so it is named here.
    if "multidevice" in item.keywords or item.nodeid.startswith(
      "optax_rms/sharding.py::"
    ):
      item.add_marker(skip)
