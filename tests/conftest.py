"""How pytest-xdist shares the tests between its workers (pyproject.toml runs
``-n 2 --dist loadgroup``). The device setup is in the root conftest.py.

A file's tests (a module's doctests too) stay in one worker, so that its
module-scoped fixtures (a benchmark run, two training processes) run once,
not once per worker; a test
that names its own ``xdist_group`` (test_contract.py: one per transformation,
whose compiled steps its tests share) keeps it.
"""

import pytest


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if item.get_closest_marker("xdist_group") is None:
      item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
