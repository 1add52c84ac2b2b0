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


# -- The documentation's code blocks, run as tests (Sybil) ---------------------
#
# Every ```python block of README.md and docs/*.md runs in order, one namespace
# per page, as a reader pastes them (testpaths lists README.md and docs). A
# block that cannot run on one machine (a multi-host launch) is preceded by
# `<!-- skip: next "why" -->`. Only the repository's own pages: the copies that
# the Sphinx build writes under docs/ (docs/readme.md, docs/benchmarks/) and
# the benchmarks' result pages are not examples.
import pathlib  # noqa: E402

from sybil import Sybil  # noqa: E402
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser  # noqa: E402

_ROOT = pathlib.Path(__file__).resolve().parent
_DOCS_COPIES = {"readme.md"}  # written by docs/conf.py at build time
_collect_page = Sybil(
  parsers=[PythonCodeBlockParser(), SkipParser()], patterns=["*.md"]
).pytest()

# docs/'s Python files are the site's build (conf.py) and a browser check
# (check_math.py), not tests; what the Sphinx build writes is not either.
collect_ignore_glob = ["docs/*.py", "docs/_build*", "docs/api*", "docs/examples*"]


def _is_doc_page(path: pathlib.Path) -> bool:
  try:
    rel = path.resolve().relative_to(_ROOT)
  except ValueError:
    return False
  if rel.suffix != ".md":
    return False
  if rel == pathlib.Path("README.md"):
    return True
  return rel.parent == pathlib.Path("docs") and rel.name not in _DOCS_COPIES


def pytest_collect_file(file_path, parent):
  """README.md and docs/*.md: their Python blocks (see above)."""
  if _is_doc_page(file_path):
    return _collect_page(file_path, parent)
  return None
