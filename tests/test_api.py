"""The public surface as tools see it: annotations are objects (not strings),
and optax's own tooling recognises the learning rate as schedule-capable."""

import inspect

import optax
import pytest

import optax_rms
from optax_rms import compat


def _public_functions():
  for module, names in ((optax_rms, optax_rms.__all__), (compat, compat.__all__)):
    for name in names:
      obj = getattr(module, name)
      if inspect.isfunction(obj):
        yield f"{module.__name__}.{name}", obj


# ids: the names alone (a function's repr holds its address, which differs
# between pytest-xdist's workers, and they must collect the same tests).
PUBLIC_FUNCTIONS = dict(_public_functions())


@pytest.mark.parametrize("name", list(PUBLIC_FUNCTIONS))
def test_public_annotations_are_objects_not_strings(name):
  fn = PUBLIC_FUNCTIONS[name]
  sig = inspect.signature(fn)
  for p in sig.parameters.values():
    assert not isinstance(p.annotation, str), (name, p.name, p.annotation)
  assert not isinstance(sig.return_annotation, str), name


@pytest.mark.parametrize(
  "fn", [optax_rms.rmsprop, compat.keras, compat.tf1, compat.timm, compat.mxnet]
)
def test_optax_tooling_sees_that_the_learning_rate_takes_schedules(fn):
  """optax's own contract tests (optax/contrib/_common_test.py,
  optax/schedules/_schedule_test.py) skip the schedule test of an optimizer
  whose learning_rate annotation is not one of these objects."""
  params = inspect.signature(fn).parameters
  lr = params.get("learning_rate", params.get("lr"))
  assert lr is not None
  assert lr.annotation in (optax.ScalarOrSchedule, optax.Schedule)
