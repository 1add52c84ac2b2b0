"""The optimizers the benchmark measures: one `Row` each, in report order.

Adding a row is one line in `ROWS`. A row names the optax_rms keywords or
attributes it needs (`needs`); where the installed optax_rms lacks one, the
row is listed as not available instead of failing (so rows for work that has
not landed yet can sit in the table).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import optax

import optax_rms

LR = 1e-3
DECAY = 0.9
EPS = 1e-8
BF16 = "bfloat16"

VARIANTS: dict[str, dict[str, Any]] = {
  "plain": {},
  "centered+momentum": {"centered": True, "momentum": 0.9},
}
# State storage modes of optax_rms.rmsprop: mode -> keywords.
MODES: dict[str, dict[str, Any]] = {
  "float32": {},  # the params' dtype: float32 on float32 params
  "bfloat16": {"nu_dtype": BF16, "mu_dtype": BF16, "momentum_dtype": BF16},
  "8bit nu": {"nu_quantization": "8bit"},
  "8bit mu": {"mu_quantization": "8bit"},
  "8bit momentum": {"momentum_quantization": "8bit"},
  "8bit all": {
    "nu_quantization": "8bit",
    "mu_quantization": "8bit",
    "momentum_quantization": "8bit",
  },
}
# The modes that mean something for each variant (no mu or momentum in plain).
VARIANT_MODES = {
  "plain": ("float32", "bfloat16", "8bit nu"),
  "centered+momentum": tuple(MODES),
}
SHORT = {"plain": "plain", "centered+momentum": "c+m"}


@dataclasses.dataclass(frozen=True)
class Row:
  """One optimizer configuration.

  name: the report's label. variant: "plain", "centered+momentum", or "-"
  for the scale rows (adam, sgd). state: how the state is stored. make: builds
  the transformation. params: the parameters' dtype. needs: optax_rms
  keywords of `rmsprop` or attributes of the package the row uses.
  reference: the row whose time this one is compared with.
  """

  name: str
  variant: str
  state: str
  make: Callable[[], optax.GradientTransformation]
  params: str = "float32"
  needs: tuple[str, ...] = ()
  reference: str = "optax.rmsprop"


def ours(variant: str, mode: str) -> optax.GradientTransformation:
  return optax_rms.rmsprop(LR, DECAY, EPS, **VARIANTS[variant], **MODES[mode])


def _ours_row(variant: str, mode: str) -> Row:
  return Row(
    f"ours {SHORT[variant]}, {mode}",
    variant,
    mode,
    functools.partial(ours, variant, mode),
    needs=tuple(k for k in MODES[mode] if k.endswith("_quantization")),
    reference=_optax_name(variant),
  )


def _optax_name(variant: str) -> str:
  return "optax.rmsprop" + ("" if variant == "plain" else f" {SHORT[variant]}")


def _wrapped(wrapper: str, variant: str, mode: str, params: str = "float32") -> Row:
  """optax_rms.<wrapper>(ours(variant, mode)) on `params`-dtype parameters."""

  def make() -> optax.GradientTransformation:
    return getattr(optax_rms, wrapper)(ours(variant, mode))

  inner = _ours_row(variant, mode)
  label = f"{wrapper}({inner.name})"
  if params != "float32":
    label += f", {params} params"
  needs = (wrapper, *inner.needs)
  return Row(label, variant, mode, make, params, needs, inner.reference)


_CM = "centered+momentum"
ROWS: tuple[Row, ...] = (
  Row("optax.rmsprop", "plain", "float32", lambda: optax.rmsprop(LR, DECAY, EPS)),
  Row(
    "optax.rmsprop c+m",
    _CM,
    "float32",
    lambda: optax.rmsprop(LR, DECAY, EPS, **VARIANTS[_CM]),
  ),
  *(_ours_row(v, m) for v in VARIANTS for m in VARIANT_MODES[v]),
  _wrapped("pack_small", "plain", "float32"),
  _wrapped("pack_small", _CM, "float32"),
  _wrapped("pack_small", _CM, "8bit all"),
  Row("optax.adam", "-", "float32", lambda: optax.adam(LR)),
  Row("optax.sgd", "-", "none", lambda: optax.sgd(LR)),
  # bfloat16 parameters: the model's own cost (sgd), the inner optimizer
  # without a wrapper (round to nearest: it stalls, but its memory is the
  # baseline of the wrappers'), then each wrapper.
  Row(f"optax.sgd, {BF16} params", "-", "none", lambda: optax.sgd(LR), BF16),
  Row(
    f"ours plain, 8bit nu, {BF16} params",
    "plain",
    "8bit nu",
    functools.partial(ours, "plain", "8bit nu"),
    BF16,
    ("nu_quantization",),
  ),
  _wrapped("kahan_summation", "plain", "8bit nu", BF16),
  _wrapped("stochastic_rounding", "plain", "8bit nu", BF16),
  _wrapped("kahan_summation", _CM, "8bit all", BF16),
  _wrapped("stochastic_rounding", _CM, "8bit all", BF16),
)


def sgd_for(params: str) -> str:
  """The name of the sgd row on `params`-dtype parameters: the optimizer
  columns of a row are measured against it (the same model, forward and
  backward, in the same parameter dtype)."""
  return "optax.sgd" if params == "float32" else f"optax.sgd, {params} params"


def missing(row: Row) -> list[str]:
  """What `row` needs that the installed optax_rms lacks (empty: runnable)."""
  keywords = inspect.signature(optax_rms.rmsprop).parameters
  return [n for n in row.needs if n not in keywords and not hasattr(optax_rms, n)]


def available(rows: tuple[Row, ...] = ROWS) -> tuple[list[Row], dict[str, list[str]]]:
  """The runnable rows, and the others with what each lacks."""
  ok, absent = [], {}
  for row in rows:
    if lacks := missing(row):
      absent[row.name] = lacks
    else:
      ok.append(row)
  return ok, absent
