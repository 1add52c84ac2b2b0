"""The contract: every public transformation and wrapper, in every storage form,
keeps the same promises.

As optax's ``alias_test.py`` and ``contrib/_common_test.py`` run every
optimizer through one checklist, each test here runs every entry of CASES
(``rmsprop`` in each storage form, ``scale_by_rms``, each ``compat`` preset,
each wrapper and compositions of them) through one promise:

- ``init`` and ``update`` under ``jit`` (and ``init`` of abstract shapes),
  and under ``vmap`` (each problem as if alone);
- an eager ``update`` equals the jitted one, bit for bit, where promised;
- a NaN or inf gradient makes that element's update and parameter
  non-finite, in float state and in every 8-bit buffer alike, and leaves the
  other elements finite (where nothing mixes elements: no clipping by norm);
- gradient magnitudes from the smallest normal float32 to the documented
  limit (|g| < 1.8e19) in one block give finite steps, none larger than the
  same transformation's with float32 state (beyond one code's rounding);
- the lean storage forms track float32 state's steps;
- a step that ``optax.apply_if_finite`` skips leaves every buffer untouched;
- an orbax round trip gives the same state and then the same training;
- ``optax.inject_hyperparams`` and ``optax.MultiSteps`` work around it;
- an eager update survives donating the new state to a jitted step;
- a state of another optimizer is refused with a TypeError naming the
  transformation, and a wrapper refuses an ``inner`` that is not a
  transformation the same way.

The promises about optax's wrappers (vmap, inject_hyperparams, MultiSteps,
foreign states) run once per kind of state, not for each of rmsprop's
storage forms and options (Case.storage_only, Case.optax_wrappers).

Promises broken by today's code are asserted as they should hold and listed
in KNOWN, each a strict xfail through ``helpers.known_bug``.

Cost: the trees are small (one leaf of one 8-bit block for the magnitudes,
one leaf over the 8-bit chunk size only where the chunk loop must run), each
case's transformation and jitted step are built once per process (and
pytest-xdist runs a file in one worker: ``--dist loadfile``).
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import STORAGE, known_bug

import optax_rms
from optax_rms import compat

LR = 0.05
BF16 = jnp.bfloat16
F32_TINY = float(jnp.finfo(jnp.float32).smallest_normal)  # 1.175e-38
LIMIT = 1.7e19  # documented: |g| < 1.8e19 (g**2 fits float32)
BIG = (1 << 16) + 300  # over _quantize.CHUNK: the 8-bit chunk loop runs


@dataclasses.dataclass(frozen=True)
class Case:
  """One transformation under contract.

  make: the transformation from its hyperparameter `hyper` (keyword), so that
    `optax.inject_hyperparams(make)` works too.
  storage: its state's storage keywords (helpers.STORAGE's forms).
  reference: the same transformation with float32 state (None: it is one).
  dtype: the parameters' dtype.
  name: what a refusal must name.
  local: a non-finite gradient element spoils only its own element (no
    clipping by norm, nothing else that mixes elements).
  every: calls per update (gradient accumulation).
  big: add a leaf larger than the 8-bit chunk.
  momentum, centered: whether it keeps those buffers.
  chain: an optax.chain is outermost (a foreign state is optax's to refuse).
  clips_inf: the preset clips gradients elementwise first (MXNet's
    clip_gradient), so an inf gradient becomes finite.
  composed: built from wrappers that run alone too; vmap (a compile of its
    own) runs on the parts.
  exact: eager == jit bit for bit is promised (README: the update is one
    compiled computation). Not where optax's own transformations run op by
    op when eager (the presets' clipping chains) or ema_params' average is
    computed outside it: there to float32 rounding.
  storage_only: one of rmsprop's storage forms, run through the promises
    that depend on how the state is stored, not through optax's wrappers
    (vmap, inject_hyperparams, MultiSteps, foreign states), which the other
    cases cover.
  optax_wrappers: run through vmap, inject_hyperparams and MultiSteps: each
    kind of state once (rmsprop's, each wrapper's, their compositions), not
    each of rmsprop's options or each preset that returns rmsprop or a chain
    ending in it.
  """

  make: Callable[..., optax.GradientTransformation]
  storage: dict = dataclasses.field(default_factory=dict)
  reference: Callable[..., optax.GradientTransformation] | None = None
  dtype: Any = jnp.float32
  name: str = "optax_rms.rmsprop"
  hyper: str = "learning_rate"
  value: float = LR
  local: bool = True
  every: int = 1
  big: bool = False
  momentum: bool = False
  centered: bool = False
  chain: bool = False
  clips_inf: bool = False
  storage_only: bool = False
  optax_wrappers: bool = True
  composed: bool = False
  exact: bool = True

  def tx(self) -> optax.GradientTransformation:
    return self.make(**{self.hyper: self.value})

  def quantized(self, buffer: str) -> bool:
    """Whether `buffer` ("nu", "mu", "momentum") exists and is in 8 bits."""
    exists = {"nu": True, "mu": self.centered, "momentum": self.momentum}[buffer]
    return exists and f"{buffer}_quantization" in self.storage


def _storage(*forms: str) -> dict:
  return {k: v for form in forms for k, v in STORAGE[form].items()}


def _case(build, forms, **kw):
  """A Case of `build(learning_rate, **kw, **storage)` in the storage forms
  `forms` (names in helpers.STORAGE), its reference in float32 state."""
  storage = _storage(*forms)
  both = ("centered", "momentum")  # an option of rmsprop's, read by the Case
  fields = set(Case.__dataclass_fields__) - set(both)
  make_kw = {k: v for k, v in kw.items() if k not in fields}
  case_kw = {k: v for k, v in kw.items() if k in fields}

  def make(storage_kw, learning_rate):
    return build(learning_rate, **make_kw, **storage_kw)

  return Case(
    make=functools.partial(make, storage),
    reference=functools.partial(make, {}) if storage else None,
    storage=storage,
    momentum=bool(make_kw.get("momentum")),
    centered=bool(make_kw.get("centered")),
    **case_kw,
  )


def _rmsprop(learning_rate, **kw):
  return optax_rms.rmsprop(learning_rate, **kw)


def _wrap(wrapper, name):
  """(build, name) for wrapper(rmsprop(...))."""

  def build(learning_rate, **kw):
    return wrapper(optax_rms.rmsprop(learning_rate, **kw))

  return dict(build=build, name=name)


def _preset(preset, lr_name="learning_rate"):
  def build(learning_rate, **kw):
    return preset(**{lr_name: learning_rate}, **kw)

  return build


CM = dict(centered=True, momentum=0.9)  # every buffer exists: nu, mu, momentum
PACK = dict(max_size=1024)  # packs every leaf of the small tree but "big"


def _pack(tx):
  return optax_rms.pack_small(tx, **PACK)


def _schedule(learning_rate, **kw):
  return optax_rms.rmsprop(
    optax.linear_schedule(learning_rate, learning_rate / 10, 10), **kw
  )


def _ema_kahan_pack(tx):
  return optax_rms.ema_params(optax_rms.kahan_summation(_pack(tx)), decay=0.9)


def _stochastic_pack(tx):
  return optax_rms.stochastic_rounding(_pack(tx))


CASES: dict[str, Case] = {
  # rmsprop in each storage form (with the buffers that form stores).
  "rmsprop-float32": _case(_rmsprop, [], **CM),
  "rmsprop-bf16_state": _case(_rmsprop, ["bf16_state"], **CM, storage_only=True),
  "rmsprop-8bit_nu": _case(_rmsprop, ["8bit_nu"], storage_only=True),
  "rmsprop-8bit_mu": _case(_rmsprop, ["8bit_mu"], **CM, storage_only=True),
  "rmsprop-8bit_momentum": _case(
    _rmsprop, ["8bit_momentum"], momentum=0.9, storage_only=True
  ),
  "rmsprop-8bit_all": _case(_rmsprop, ["8bit_all"], **CM),
  # rmsprop's other options.
  "rmsprop-schedule-nesterov-bc-eps_out-wd": _case(
    _schedule,
    [],
    momentum=0.9,
    nesterov=True,
    bias_correction=True,
    eps_in_sqrt=False,
    weight_decay=1e-2,
    weight_decay_mode="decoupled",
    optax_wrappers=False,
  ),
  "rmsprop-centered-bc-8bit_nu_mu": _case(
    _rmsprop,
    ["8bit_nu", "8bit_mu"],
    centered=True,
    bias_correction=True,
    initial_scale=1.0,
    storage_only=True,
  ),
  "rmsprop-bf16_params-8bit_all": _case(
    _rmsprop, ["8bit_all"], **CM, dtype=BF16, optax_wrappers=False
  ),
  "scale_by_rms-centered-bf16_nu": Case(
    make=lambda decay: optax_rms.scale_by_rms(decay, centered=True, nu_dtype=BF16),
    reference=lambda decay: optax_rms.scale_by_rms(decay, centered=True),
    storage=dict(nu_dtype=BF16),
    centered=True,
    name="optax_rms.scale_by_rms",
    hyper="decay",
    value=0.9,
  ),
  # compat presets: bare, chained, with accumulation and EMA.
  "compat.pytorch-8bit_nu": _case(
    _preset(compat.pytorch, "lr"),
    ["8bit_nu"],
    momentum=0.9,
    weight_decay=1e-2,
    optax_wrappers=False,
  ),
  "compat.keras-clipnorm": _case(
    _preset(compat.keras),
    [],
    momentum=0.9,
    clipnorm=1.0,
    local=False,
    chain=True,
    exact=False,
    optax_wrappers=False,
  ),
  "compat.keras-ema-accumulation-8bit_all": _case(
    _preset(compat.keras),
    ["8bit_all"],
    **CM,
    use_ema=True,
    ema_momentum=0.9,
    gradient_accumulation_steps=2,
    name="ema_params",
    every=2,
    exact=False,
    composed=True,
  ),
  "compat.tf1-bf16_state": _case(
    _preset(compat.tf1), ["bf16_state"], **CM, optax_wrappers=False
  ),
  "compat.mxnet-clip": _case(
    _preset(compat.mxnet),
    [],
    centered=True,
    clip_weights=10.0,
    clip_gradient=5.0,
    chain=True,
    clips_inf=True,
    exact=False,
    optax_wrappers=False,
  ),
  "compat.timm-8bit_momentum": _case(
    _preset(compat.timm, "lr"),
    ["8bit_momentum"],
    momentum=0.9,
    weight_decay=1e-2,
    decoupled_decay=True,
    optax_wrappers=False,
  ),
  # wrappers, alone and composed.
  "pack_small-8bit_all": _case(
    **_wrap(_pack, "pack_small"), forms=["8bit_all"], **CM, big=True
  ),
  "kahan_summation": _case(
    **_wrap(optax_rms.kahan_summation, "kahan_summation"),
    forms=[],
    momentum=0.9,
    dtype=BF16,
  ),
  "stochastic_rounding": _case(
    **_wrap(
      functools.partial(optax_rms.stochastic_rounding, seed=3), "stochastic_rounding"
    ),
    forms=[],
    centered=True,
    dtype=BF16,
  ),
  "host_offload": _case(
    **_wrap(optax_rms.host_offload, "host_offload"), forms=[], momentum=0.9
  ),
  "ema_params": _case(
    **_wrap(functools.partial(optax_rms.ema_params, decay=0.9), "ema_params"),
    forms=[],
    centered=True,
    exact=False,
  ),
  "ema_params(kahan(pack_small))-8bit_nu": _case(
    **_wrap(_ema_kahan_pack, "ema_params"),
    forms=["8bit_nu"],
    momentum=0.9,
    dtype=BF16,
    exact=False,
    composed=True,
  ),
  "stochastic_rounding(pack_small)-8bit_all": _case(
    **_wrap(_stochastic_pack, "stochastic_rounding"),
    forms=["8bit_all"],
    **CM,
    dtype=BF16,
    composed=True,
  ),
}


# Promises that today's code breaks, asserted as they should hold: promise ->
# (what breaks, the cases that break it). Each becomes a strict xfail through
# helpers.known_bug: fixed, the test passes and fails as XPASS until its line
# here is deleted.
_HOST_OFFLOAD = (
  "host_offload's jitted update returns scalar leaves in device memory, so "
  "MultiSteps' cond branches differ",
  {"host_offload"},
)
KNOWN: dict[str, tuple[str, set[str]]] = {
  "MultiSteps": _HOST_OFFLOAD,
}

# Centered with bias correction and a constant gradient: float32 state's
# variance nu_hat - |mu_hat|^2 is the difference of two numbers near g**2
# (2.9e38 at the limit), so its step there is rounding noise, not a bound.
# The stored-variance form (8-bit nu or mu) has no such difference and gives
# the math's step (g / sqrt(decay * initial_scale / (1 - decay)) at the first
# update); tests/test_quantize.py checks it against float32 state where that
# is exact.
NO_FLOAT32_BOUND = {"rmsprop-centered-bc-8bit_nu_mu"}


def cases(promise: str, where: Callable[[Case], bool] = lambda c: True):
  """Parametrize a test of `promise` over the CASES that satisfy `where`.

  KNOWN marks the cases that break the promise today.
  """
  reason, broken = KNOWN.get(promise, ("", set()))
  params = []
  for name, case in CASES.items():
    if not where(case):
      continue
    marks = [known_bug(reason)] if name in broken else []
    params.append(pytest.param(name, id=name, marks=marks))
  return pytest.mark.parametrize("name", params)


def _structural(case: Case) -> bool:
  """The promises about optax's wrappers: once per kind of state."""
  return case.optax_wrappers and not case.storage_only


# ------------------------------------------------------- trees and steps


def _params(case: Case) -> dict:
  k = jax.random.split(jax.random.PRNGKey(0), 6)
  p = {
    "w": jax.random.normal(k[0], (16, 24)),  # 384 elements: two 8-bit blocks
    "m": jax.random.normal(k[1], (256,)),  # one 8-bit block
    "b": 0.1 * jax.random.normal(k[2], (24,)),
    "s": jnp.ones(()),
  }
  if case.big:
    p["big"] = jax.random.normal(k[3], (BIG,))
  p = jax.tree.map(lambda x: x.astype(case.dtype), p)
  if case.dtype != jnp.float32:
    # A wider leaf beside the narrow ones (the rounding wrappers pass it
    # through; complex ones: test_rounding.py).
    p["f32"] = jax.random.normal(k[4], (8,))
  # Committed to the device, as orbax restores them: then a restored state
  # reuses the compiled step (an uncommitted one would be another signature).
  return jax.device_put(p, jax.devices()[0])


def _grads(params: dict, t: int) -> dict:
  key = jax.random.fold_in(jax.random.PRNGKey(1), t)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
    treedef,
    [
      jax.random.normal(k, x.shape).astype(x.dtype)
      for k, x in zip(keys, leaves, strict=True)
    ],
  )


def _jitted_step(tx):
  """A step with the update jitted (the parameters added eagerly, as the
  eager step does: see helpers.make_step)."""
  update = jax.jit(tx.update)
  step = helpers.make_step(tx, update)
  step.update = update
  return step


@functools.cache
def _built(name: str) -> tuple[optax.GradientTransformation, Callable, dict]:
  """The case's transformation, its jitted step and parameters, built once."""
  case = CASES[name]
  tx = case.tx()
  return tx, _jitted_step(tx), _params(case)


@functools.cache
def _reference(name: str) -> tuple[optax.GradientTransformation, Callable]:
  case = CASES[name]
  make = case.reference or case.make
  tx = make(**{case.hyper: case.value})
  return tx, _jitted_step(tx)


def _wide(x) -> np.ndarray:
  """float64 or complex128: NumPy's view of any leaf, bfloat16 included."""
  x = np.asarray(x)
  return x.astype(np.complex128 if x.dtype.kind == "c" else np.float64)


def _finite(tree) -> bool:
  return all(bool(np.all(np.isfinite(_wide(x)))) for x in jax.tree.leaves(tree))


def _float_leaves(state) -> list:
  return [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]


# ------------------------------------------------------------------ jit, vmap


@cases("jit")
def test_init_and_update_under_jit(name):
  tx, step, params = _built(name)
  state = tx.init(params)
  helpers.assert_trees_equal(jax.jit(tx.init)(params), state)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  shapes = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  assert (
    jax.tree.map(lambda x: (x.shape, x.dtype), jax.eval_shape(tx.init, abstract))
    == shapes
  )
  new_params, new_state, _ = helpers.run(
    tx, params, [_grads(params, t) for t in range(3)], step=step
  )
  assert helpers.tree_dtypes(new_params) == helpers.tree_dtypes(params)
  assert helpers.tree_dtypes(new_state) == helpers.tree_dtypes(state)
  assert _finite(new_params) and _finite(_float_leaves(new_state))
  assert step.update._cache_size() == 1  # the same signature: traced once


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


@cases("vmap", where=lambda c: _structural(c) and not (c.big or c.composed))
def test_vmap_over_problems_matches_each_problem_alone(name):
  """Two independent problems in one vmapped step: each gets its own steps
  (to the same-math tolerance: vmap is another program, which may fuse and
  round differently)."""
  case = CASES[name]
  tx, step, params = _built(name)
  problems = [params, jax.tree.map(lambda x: (x * 2).astype(x.dtype), params)]
  grads = [[_grads(p, t + 7 * i) for t in range(2)] for i, p in enumerate(problems)]
  vstep = helpers.make_step(tx, jax.jit(jax.vmap(tx.update)))
  got, _, _ = helpers.run(
    tx,
    _stack(problems),
    [_stack([g[t] for g in grads]) for t in range(2)],
    state=jax.vmap(tx.init)(_stack(problems)),
    step=vstep,
  )
  for i, p in enumerate(problems):
    want, _, _ = helpers.run(tx, p, grads[i], step=step)
    _assert_close_trees(_unstack(got, i), want, case)


def _assert_close_trees(actual, desired, case: Case, rel_step: float | None = None):
  """Same-math tolerance of the parameters' dtype; for 8-bit state, a code's
  stochastic rounding may land on the other neighbour in another program, so
  a parameter may differ by a fraction of one step there."""
  tol = helpers.SAME_MATH[jnp.dtype(case.dtype)]
  for (path, a), d in zip(
    jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(desired), strict=True
  ):
    a, d = _wide(a), _wide(d)
    atol = tol["atol"]
    if helpers.is_8bit(case.storage):
      atol = max(atol, 0.2 * LR)
    np.testing.assert_allclose(
      a, d, rtol=tol["rtol"], atol=atol, err_msg=jax.tree_util.keystr(path)
    )


# -------------------------------------------------------------- eager == jit


@cases("eager")
def test_eager_update_equals_jitted_bit_for_bit(name):
  """docs/numerics.md: the update is one compiled computation whichever way
  it is called. The presets that chain optax's own clipping run those ops
  one by one when eager: there only to float32 rounding."""
  tx, step, params = _built(name)
  grads = [_grads(params, t) for t in range(3)]
  eager = helpers.run(tx, params, grads)
  jitted = helpers.run(tx, params, grads, step=step)
  if not CASES[name].exact:
    _assert_close_trees(eager, jitted, CASES[name])
  else:
    helpers.assert_trees_equal(eager, jitted, bitwise=True)


# ------------------------------------------------------- non-finite gradients


def _poisoned(params: dict, t: int, value: float) -> dict:
  g = _grads(params, t)
  g["w"] = g["w"].at[3, 5].set(value)
  return g


def _assert_nonfinite_spoils_its_element(name, value):
  """rmsprop's docstring: a NaN or inf gradient makes the matching parameter
  non-finite (as optax); 8-bit buffers alike (docs/numerics.md: the element
  is its own problem, its block's neighbours untouched)."""
  case = CASES[name]
  tx, step, params = _built(name)
  state = helpers.committed(tx.init(params))
  params, state, _ = step(params, state, _grads(params, 0))
  calls = [_poisoned(params, 1, value)] + [
    _grads(params, 2 + i) for i in range(case.every - 1)
  ]
  new_params, _, updates = helpers.run(tx, params, calls, state=state, step=step)
  if case.clips_inf and value == np.inf:
    # MXNet's clip_gradient clips inf to its bound first: all finite.
    assert _finite(new_params) and _finite(updates)
    return
  update_w = np.asarray(updates[-1]["w"], np.float32)
  assert not np.isfinite(update_w[3, 5]), update_w[3, 5]
  assert not np.isfinite(np.asarray(new_params["w"], np.float32)[3, 5])
  if case.local:
    others = jax.tree.map(np.asarray, new_params)
    others["w"] = np.delete(np.asarray(others["w"], np.float32).ravel(), 3 * 24 + 5)
    assert _finite(others)


@cases("nan")
def test_nan_gradient_spoils_its_element_as_documented(name):
  _assert_nonfinite_spoils_its_element(name, np.nan)


@cases("inf")
def test_inf_gradient_spoils_its_element_as_documented(name):
  _assert_nonfinite_spoils_its_element(name, np.inf)


# ------------------------------------------------------------------ magnitudes


def _magnitudes(params: dict, dtype) -> dict:
  """One 8-bit block ("m": 256 elements) spanning every float32 normal
  magnitude up to the documented limit, signs alternating."""
  mags = np.geomspace(F32_TINY, LIMIT, 256)
  signs = np.where(np.arange(256) % 2, -1.0, 1.0)
  g = _grads(params, 0)
  g["m"] = jnp.asarray(mags * signs, jnp.float32).astype(dtype)
  return g


def _bound(case: Case) -> tuple[float, float]:
  """How much larger than float32 state's a step may be: (slack, floor), the
  step bounded by slack * |float32's| + floor * (the block's largest).

  - bfloat16 state: one rounding to nearest of each buffer (2^-8 relative).
  - 8-bit nu: a code is at most 1/8 below the value it stands for (stochastic
    rounding between neighbours 6.25-12.5% apart), a step 1/sqrt(1 - 1/8) =
    1.069 larger; below the block's range a value is stored at its floor,
    a smaller step (docs/numerics.md).
  - 8-bit mu or momentum (signed codes): the same relative spacing, carried
    over a few steps by the momentum (1.35), and below 2^-16 of the block's
    maximum evenly spaced codes down to 0: an absolute resolution of 2^-16
    of the largest, doubled.
  What must never happen is a step many times larger (issue: 20,000x).
  """
  if not case.storage:
    return 1.0, 0.0
  if not helpers.is_8bit(case.storage):
    return 1.02, 0.0
  if case.quantized("mu") or case.quantized("momentum"):
    return 1.35, 2.0**-15
  return 1.08, 0.0


@cases(
  "magnitudes",
  where=lambda c: (
    c.reference is not None and all(c is not CASES[k] for k in NO_FLOAT32_BOUND)
  ),
)
def test_magnitudes_from_smallest_normal_to_the_limit_in_one_block(name):
  """Every normal float32 magnitude up to the documented limit in one 8-bit
  block, the same gradient for 5 updates (nu reaches g**2 near the top):
  finite steps and state, none larger than float32 state's (see _bound)."""
  case = CASES[name]
  tx, step, params = _built(name)
  ref_tx, ref_step = _reference(name)
  grads = [_magnitudes(params, case.dtype)] * (5 * case.every)
  _, state, ups = helpers.run(tx, params, grads, step=step)
  _, _, ref_ups = helpers.run(ref_tx, params, grads, step=ref_step)
  assert _finite(ups) and _finite(_float_leaves(state))
  slack, floor = _bound(case)
  for t, (u, r) in enumerate(zip(ups, ref_ups, strict=True)):
    u, r = np.abs(_wide(u["m"])), np.abs(_wide(r["m"]))
    allowed = slack * r + floor * np.max(r)
    worst = np.argmax(u - allowed)
    assert np.all(u <= allowed), (
      f"update {t}: |g|={np.geomspace(F32_TINY, LIMIT, 256)[worst]:.3g} "
      f"step {u[worst]:.3g} > float32 state's {r[worst]:.3g}"
    )


@cases("lean", where=lambda c: c.reference is not None)
def test_lean_storage_tracks_float32_state(name):
  """bfloat16 and 8-bit state give float32 state's steps up to their
  rounding: each step within 30% of the largest step of its leaf (8-bit
  codes are 6-12% apart, and the momentum adds up several)."""
  tx, step, params = _built(name)
  ref_tx, ref_step = _reference(name)
  case = CASES[name]
  # A mean of 2 beside the noise: the centered variance is then a small
  # difference of large terms (test_quantize.py's large-mean test).
  grads = [
    jax.tree.map(lambda g: (g + 2).astype(g.dtype), _grads(params, t))
    for t in range(4 * case.every)
  ]
  _, _, ups = helpers.run(tx, params, grads, step=step)
  _, _, ref_ups = helpers.run(ref_tx, params, grads, step=ref_step)
  for u, r in zip(ups, ref_ups, strict=True):
    for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(u), jax.tree.leaves(r), strict=True
    ):
      a, b = _wide(a), _wide(b)
      scale = np.max(np.abs(b))
      assert np.max(np.abs(a - b)) <= 0.3 * scale + 1e-30, jax.tree_util.keystr(path)


# ------------------------------------------------------------- apply_if_finite


@cases("apply_if_finite")
def test_step_skipped_by_apply_if_finite_leaves_every_buffer_untouched(name):
  case = CASES[name]
  tx, _, params = _built(name)
  guarded = optax.apply_if_finite(tx, max_consecutive_errors=3)
  step = _jitted_step(guarded)
  params, state, _ = helpers.run(
    guarded, params, [_grads(params, t) for t in range(case.every + 1)], step=step
  )
  new_params, new_state, updates = helpers.run(
    guarded, params, [_poisoned(params, 5, np.nan)], state=state, step=step
  )
  assert int(new_state.notfinite_count) == 1
  helpers.assert_trees_equal(new_state.inner_state, state.inner_state, bitwise=True)
  helpers.assert_trees_equal(new_params, params, bitwise=True)
  assert not any(np.any(_wide(u)) for u in jax.tree.leaves(updates))


# ------------------------------------------------------------------- orbax


@cases("orbax")
def test_orbax_round_trip_then_identical_training(name, tmp_path):
  tx, step, params = _built(name)
  params, state, _ = helpers.run(
    tx, params, [_grads(params, t) for t in range(2)], step=step
  )
  restored = helpers.orbax_round_trip(tx, params, state, tmp_path / "state")
  assert type(restored) is type(state)
  helpers.assert_trees_equal(restored, state, bitwise=True)
  more = [_grads(params, t) for t in range(2, 4)]
  helpers.assert_trees_equal(
    helpers.run(tx, params, more, state=restored, step=step),
    helpers.run(tx, params, more, state=state, step=step),
    bitwise=True,
  )


# ---------------------------------------------------------- optax's wrappers


@cases("inject_hyperparams", where=_structural)
def test_inject_hyperparams_gives_the_same_steps_and_traces_once(name):
  """The hyperparameter as an array in the state: the steps of the Python
  number (to float32 rounding), and changing it retraces nothing."""
  case = CASES[name]
  tx, step, params = _built(name)
  injected = optax.inject_hyperparams(case.make)(**{case.hyper: case.value})
  istep = _jitted_step(injected)
  grads = [_grads(params, t) for t in range(2 * case.every)]
  got, _, _ = helpers.run(injected, params, grads, step=istep)
  want, _, _ = helpers.run(tx, params, grads, step=step)
  _assert_close_trees(got, want, case)
  state = helpers.committed(injected.init(params))
  state.hyperparams[case.hyper] = jnp.full_like(
    state.hyperparams[case.hyper], case.value / 2
  )
  helpers.run(injected, params, grads[:1], state=state, step=istep)
  assert istep.update._cache_size() == 1


@cases("MultiSteps", where=_structural)
def test_multi_steps_accumulates_then_steps_as_one(name):
  """optax.MultiSteps(k=2): zero updates between, and on the k-th call the
  step of the mean gradient (here both calls' gradients are equal, so the
  mean is exact)."""
  case = CASES[name]
  tx, step, params = _built(name)
  multi = optax.MultiSteps(tx, every_k_schedule=2)
  mstep = _jitted_step(multi)
  grads = [_grads(params, t // 2) for t in range(4 * case.every)]
  got, _, updates = helpers.run(multi, params, grads, step=mstep)
  for u in updates[::2]:
    assert not any(np.any(_wide(x)) for x in jax.tree.leaves(u))
  want, _, _ = helpers.run(tx, params, grads[::2], step=step)
  _assert_close_trees(got, want, case)


# -------------------------------------------------------------------- donation


# host_offload is left out: its donated step needs out_shardings and still
# aborts the process here; test_offload.py donates it the way that works.
@cases("donation", where=lambda c: c.name != "host_offload")
def test_eager_update_survives_donating_the_new_state(name):
  """A caller keeps the eager update, then donates the new state to a jitted
  step (as a training loop does): the update must still be readable."""
  tx, _, params = _built(name)
  g = _grads(params, 0)
  updates, state = tx.update(g, tx.init(params), params)
  copy = jax.tree.map(np.array, updates)
  donating = jax.jit(helpers.make_step(tx), donate_argnums=1)
  donating(params, state, g)
  helpers.assert_trees_equal(jax.tree.map(np.asarray, updates), copy, bitwise=True)


# ------------------------------------------------------------------- refusals

WRAPPERS = {
  "pack_small": optax_rms.pack_small,
  "kahan_summation": optax_rms.kahan_summation,
  "stochastic_rounding": optax_rms.stochastic_rounding,
  "host_offload": optax_rms.host_offload,
  "ema_params": optax_rms.ema_params,
}


@cases("foreign_state", where=lambda c: not c.storage_only and not c.chain)
def test_a_foreign_state_is_refused_naming_the_transformation(name):
  """Another optimizer's state, or None: a TypeError naming the outermost
  transformation (an optax.chain outermost is optax's to refuse)."""
  tx, _, params = _built(name)
  for foreign in (optax.adam(0.1).init(params), None):
    with pytest.raises(TypeError, match=CASES[name].name.replace(".", r"\.")):
      tx.update(_grads(params, 0), foreign, params)


@pytest.mark.parametrize(
  "inner",
  [optax.adam, object(), None, (optax.identity(),)],
  ids=["a_factory", "object", "None", "tuple"],
)
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_a_wrapper_refuses_an_inner_that_is_not_a_transformation(wrapper, inner):
  with pytest.raises(TypeError, match=wrapper):
    WRAPPERS[wrapper](inner)


@pytest.mark.parametrize("seed", [0, 2**31 - 1, 2**31, 2**32 - 1])
def test_stochastic_rounding_takes_every_documented_seed(seed):
  """stochastic_rounding's docstring: seed in [0, 2**32)."""
  tx = optax_rms.stochastic_rounding(optax_rms.rmsprop(LR), seed=seed)
  params = {"w": jnp.ones(8, BF16)}
  updates, _ = tx.update({"w": jnp.full(8, 0.3, BF16)}, tx.init(params), params)
  assert _finite(updates)
