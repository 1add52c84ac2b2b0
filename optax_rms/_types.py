"""The type aliases of the public signatures, which print as their names.

``help()`` and ``inspect.signature`` print an annotation's value, and the
values of jax's and optax's aliases are long unions: ``jax.typing.ArrayLike``
prints as ``Union[jax.Array, numpy.ndarray, numpy.bool, numpy.number, bool,
int, float, complex]``, ``optax.Params`` as that plus ``Iterable[...]`` and
``Mapping[...]``, and a signature with a dozen of them fills a terminal's
first screen. A ``TypeAliasType`` prints as its name; type checkers (mypy,
pyright) and Sphinx read it as its value. Each alias here is that of jax or
optax under the same name, so the names mean what jax's and optax's
documentation says they mean.
"""

import sys
from collections.abc import Callable
from typing import Any

import jax
import optax

if sys.version_info >= (3, 12):
  from typing import TypeAliasType
else:  # typing_extensions backports it (a dependency of optax_rms)
  from typing_extensions import TypeAliasType

__all__ = [
  "Array",
  "ArrayLike",
  "DTypeLike",
  "GradientTransformation",
  "GradientTransformationExtraArgs",
  "MaskOrFn",
  "OptState",
  "Params",
  "ScalarOrSchedule",
  "Updates",
]

# jax's array type (it prints as jax.jaxlib._jax.Array, its defining module).
Array = TypeAliasType("Array", jax.Array)
# A scalar hyperparameter: a Python or NumPy number or a (concrete or traced)
# jax array, as `optax.inject_hyperparams` passes them.
ArrayLike = TypeAliasType("ArrayLike", jax.typing.ArrayLike)
# A number or an `optax.Schedule` (a function of the 0-based step).
ScalarOrSchedule = TypeAliasType("ScalarOrSchedule", optax.ScalarOrSchedule)
# Pytrees of arrays: the parameters, the updates (gradients), a state.
Params = TypeAliasType("Params", optax.Params)
Updates = TypeAliasType("Updates", optax.Updates)
OptState = TypeAliasType("OptState", optax.OptState)
# A dtype, or anything `jnp.dtype` reads as one ("bfloat16", jnp.float32).
DTypeLike = TypeAliasType("DTypeLike", jax.typing.DTypeLike)
# Which parameters an option applies to, as `optax.masked` takes it: a pytree
# of bools (or a prefix of the parameters' tree), or a function of the
# parameters returning one.
MaskOrFn = TypeAliasType("MaskOrFn", Any | Callable[[Params], Any])
# optax's transformations (they print with their module, optax._src.base).
GradientTransformation = TypeAliasType(
  "GradientTransformation", optax.GradientTransformation
)
GradientTransformationExtraArgs = TypeAliasType(
  "GradientTransformationExtraArgs", optax.GradientTransformationExtraArgs
)
