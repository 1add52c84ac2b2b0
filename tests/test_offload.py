"""optax_rms.host_offload: the optimizer state in pinned host memory.

On the CPU the "device" and "pinned_host" memories are the same RAM, so what
is tested here is the mechanics: where JAX says every buffer lives (after
init, after a jitted step, on a mesh with the sharding spec kept), that the
trajectory is bit for bit the device-resident one (offloading moves the
state, it does not change the math), that a donated step reuses the state's
host buffers (read from the compiled program), and the errors. The speed on a
GPU is benchmarks/offload/'s.
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

import optax_rms
from optax_rms import sharding

HOST = "pinned_host"
STEPS = 4

# name -> inner transformation (a dict, so that the lead's mu/momentum 8-bit
# options are one line each once they land).
INNERS = {
  "rmsprop": lambda: optax_rms.rmsprop(0.01),
  "rmsprop-centered-momentum": lambda: optax_rms.rmsprop(
    0.01, centered=True, momentum=0.9
  ),
  "optax.adam": lambda: optax.adam(0.01),
  # "b" and "c" (<= 64 elements) are packed, "w" passes through.
  "pack_small": lambda: optax_rms.pack_small(
    optax_rms.rmsprop(0.01, centered=True, momentum=0.9), max_size=64
  ),
  "nu-8bit": lambda: optax_rms.rmsprop(0.01, momentum=0.9, nu_quantization="8bit"),
}
inners = pytest.mark.parametrize("name", list(INNERS))


def _params():
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  return {
    "w": jax.random.normal(k1, (16, 64)),
    "b": jax.random.normal(k2, (64,)),
    "c": jax.random.normal(k3, (3,)),
  }


def _loss(params, t):
  x = jnp.sin(jnp.arange(16.0) + t)
  h = jnp.tanh(x @ params["w"] + params["b"])
  return jnp.sum(jnp.square(h[:3] - params["c"]))


def _make_step(tx, **jit_kwargs):
  def step(params, state, t):
    grads = jax.grad(_loss)(params, t)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  return jax.jit(step, **jit_kwargs)


def _make_donating_step(tx, state):
  """The step on one device, donating params and state. jit is given the
  out_shardings (the state's, in host memory): without them jax 0.10 pairs
  donated buffers with outputs by shape and dtype alone, and may hand a
  device output a donated host buffer (the run aborts: "PjRtBuffer's memory
  kind does not match sharding's memory kind")."""
  device = SingleDeviceSharding(jax.devices()[0])
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  return _make_step(tx, out_shardings=(device, state_sh, device), donate_argnums=(0, 1))


def _kinds(tree):
  return {x.sharding.memory_kind for x in jax.tree.leaves(tree)}


def _run(tx, params, state, step, steps=STEPS):
  for t in range(steps):
    params, state, _ = step(params, state, jnp.float32(t))
  return params, state


def _assert_equal_trees(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, a), b in zip(
    jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
  ):
    err = jax.tree_util.keystr(path)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=err)


# --- placement and exactness, one device ------------------------------------------


@inners
def test_every_state_buffer_in_host_memory_after_init_and_step(name):
  tx = optax_rms.host_offload(INNERS[name]())
  params = _params()
  state = tx.init(params)
  assert isinstance(state, optax_rms.HostOffloadState)
  assert _kinds(state) == {HOST}  # count included
  params, state, updates = _make_donating_step(tx, state)(params, state, jnp.float32(0))
  assert _kinds(state) == {HOST}
  assert _kinds(params) == _kinds(updates) == {"device"}
  # Eagerly too (each move a dispatch of its own).
  updates, state = tx.update(jax.grad(_loss)(params, 1.0), state, params)
  assert _kinds(state) == {HOST} and _kinds(updates) == {"device"}


@inners
def test_trajectory_is_bit_for_bit_the_device_resident_one(name):
  inner = INNERS[name]()
  tx = optax_rms.host_offload(inner)
  state = tx.init(_params())
  got_params, got_state = _run(tx, _params(), state, _make_donating_step(tx, state))
  state = inner.init(_params())
  want_params, want_state = _run(
    inner, _params(), state, _make_donating_step(inner, state)
  )
  _assert_equal_trees(got_params, want_params)
  _assert_equal_trees(got_state.inner_state, want_state)
  assert _kinds(want_state) == {"device"}


# --- on a mesh: the sharding spec kept ---------------------------------------------


def _mesh():
  return jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


def _param_shardings(mesh):
  return {
    "w": NamedSharding(mesh, P(None, "model")),
    "b": NamedSharding(mesh, P("model")),
    "c": NamedSharding(mesh, P()),
  }


PLACEMENTS = {
  "mirrored": lambda tx, params, kind: sharding.state_shardings(
    tx, params, memory_kind=kind
  ),
  "zero1": lambda tx, params, kind: sharding.zero1_state_shardings(
    tx, params, "data", memory_kind=kind
  ),
}


@pytest.mark.multidevice
@pytest.mark.parametrize(
  "placement, name",
  [
    ("mirrored", "rmsprop-centered-momentum"),
    ("zero1", "rmsprop-centered-momentum"),
    ("zero1", "pack_small"),
    ("zero1", "nu-8bit"),  # the per-block scales start replicated
  ],
)
def test_on_a_mesh_the_spec_is_kept_and_the_trajectory_equal(placement, name):
  mesh = _mesh()
  psh = _param_shardings(mesh)
  params = jax.device_put(_params(), psh)
  inner = INNERS[name]()
  tx = optax_rms.host_offload(inner)
  host_sh = PLACEMENTS[placement](tx, params, HOST)
  # The same specs as the device-resident state's, in host memory.
  device_sh = PLACEMENTS[placement](inner, params, None)
  assert jax.tree.map(lambda s: s.with_memory_kind(HOST), device_sh) == (
    host_sh.inner_state
  )
  assert any(s.spec != P() for s in jax.tree.leaves(host_sh))  # something is split

  state = jax.jit(tx.init, out_shardings=host_sh)(params)
  assert jax.tree.map(lambda x: x.sharding, state) == host_sh
  replicated = NamedSharding(mesh, P())
  step = _make_step(
    tx,
    in_shardings=(psh, host_sh, replicated),
    out_shardings=(psh, host_sh, psh),
    donate_argnums=(0, 1),
  )
  got_params, got_state = _run(tx, params, state, step)
  assert jax.tree.map(lambda x: x.sharding, got_state) == host_sh

  device_step = _make_step(
    inner,
    in_shardings=(psh, device_sh, replicated),
    out_shardings=(psh, device_sh, psh),
    donate_argnums=(0, 1),
  )
  want_state = jax.jit(inner.init, out_shardings=device_sh)(
    jax.device_put(_params(), psh)
  )
  want_params, want_state = _run(
    inner, jax.device_put(_params(), psh), want_state, device_step
  )
  _assert_equal_trees(got_params, want_params)
  _assert_equal_trees(got_state.inner_state, want_state)


@pytest.mark.multidevice
def test_eager_init_on_a_mesh_keeps_each_arrays_sharding():
  # No out_shardings: the state's arrays keep the params' shardings, and the
  # uncommitted count is replicated over their mesh (not committed to device 0,
  # which a step on the mesh would refuse).
  mesh = _mesh()
  psh = _param_shardings(mesh)
  params = jax.device_put(_params(), psh)
  tx = optax_rms.host_offload(optax_rms.rmsprop(0.01, momentum=0.9))
  state = tx.init(params)
  want = sharding.state_shardings(tx, params, memory_kind=HOST)
  assert jax.tree.map(lambda x: x.sharding, state) == want
  step = _make_step(tx, out_shardings=(psh, want, psh), donate_argnums=(0, 1))
  params, state, _ = step(params, state, jnp.float32(0))
  assert jax.tree.map(lambda x: x.sharding, state) == want


# --- donation, from the compiled program ----------------------------------------


def _entry_layout(compiled):
  """(argument layouts, output layouts) of the compiled entry computation."""
  header = compiled.as_text().splitlines()[0]  # HloModule ..., its attributes
  # "...layout={(arg, ...)->(out, ...)}": a layout "{1,0:S(5)}" holds ")}" too,
  # so the outputs run to the last one.
  layout = re.search(r"entry_computation_layout=\{\((.*?)\)->\((.*)\)\}", header)
  assert layout is not None, header
  return layout.group(1), layout.group(2)


def _state_bytes(state):
  return sum(x.nbytes for x in jax.tree.leaves(state))


def _offloaded_and_donated(compiled, n_state, state_bytes):
  """Whether the step keeps the state in host memory (memory space 5, XLA's
  host space, on each of the state's n_state arguments and outputs) and
  writes the new state into the old one's buffers (aliased bytes)."""
  args, outs = _entry_layout(compiled)
  memory = compiled.memory_analysis()
  host_args, host_outs = args.count(":S(5)"), outs.count(":S(5)")
  if memory.host_argument_size_in_bytes:  # backends that count host memory apart
    host_bytes = memory.host_alias_size_in_bytes
  else:  # the CPU: one memory, counted in the plain figures
    host_bytes = memory.alias_size_in_bytes
  return host_args == host_outs == n_state and host_bytes >= state_bytes


def test_a_donated_step_reuses_the_states_host_buffers():
  inner = optax_rms.rmsprop(0.01, centered=True, momentum=0.9)
  tx = optax_rms.host_offload(inner)
  params = _params()
  state = tx.init(params)
  n_state, state_bytes = len(jax.tree.leaves(state)), _state_bytes(state)
  t = jnp.float32(0)

  device = SingleDeviceSharding(jax.devices()[0])

  def compile_(tx, state, **jit_kwargs):
    # out_shardings as in _make_donating_step.
    out = (device, jax.tree.map(lambda x: x.sharding, state), device)
    step = _make_step(tx, out_shardings=out, **jit_kwargs)
    return step.lower(params, state, t).compile()

  donated = compile_(tx, state, donate_argnums=(1,))
  assert _offloaded_and_donated(donated, n_state, state_bytes)
  memory = donated.memory_analysis()
  # Nothing beside the arguments and the non-aliased outputs (the params and
  # updates): no second copy of the state anywhere.
  non_state_out = memory.output_size_in_bytes - state_bytes
  assert memory.peak_memory_in_bytes <= memory.argument_size_in_bytes + (
    non_state_out + memory.temp_size_in_bytes
  )
  # The controls: the same check fails without donation, or without offload.
  kept = compile_(tx, state)
  assert not _offloaded_and_donated(kept, n_state, state_bytes)
  assert kept.memory_analysis().peak_memory_in_bytes >= (
    memory.peak_memory_in_bytes + state_bytes
  )
  on_device = compile_(inner, inner.init(params), donate_argnums=(1,))
  assert not _offloaded_and_donated(on_device, n_state, state_bytes)

  # And at run time: the donated host buffers are gone, the new ones in host
  # memory.
  _, new_state, _ = _make_donating_step(tx, state)(params, state, t)
  assert all(x.is_deleted() for x in jax.tree.leaves(state))
  assert _kinds(new_state) == {HOST}


# --- bad input --------------------------------------------------------------------


def test_an_unknown_memory_kind_lists_the_devices_kinds():
  kinds = tuple(m.kind for m in jax.devices()[0].addressable_memories())
  with pytest.raises(ValueError, match="memory_kind='hbm'") as info:
    optax_rms.host_offload(optax_rms.rmsprop(0.1), memory_kind="hbm")
  assert str(kinds) in str(info.value)
  with pytest.raises(TypeError, match="memory_kind must be a memory kind"):
    optax_rms.host_offload(optax_rms.rmsprop(0.1), memory_kind=5)  # type: ignore


def test_the_devices_own_memory_and_unpinned_host_are_refused():
  with pytest.raises(ValueError, match="the device's own memory"):
    optax_rms.host_offload(optax_rms.rmsprop(0.1), memory_kind="device")
  # jax.jit would put an output asked for in unpinned_host in device memory.
  with pytest.raises(ValueError, match="'pinned_host' only"):
    optax_rms.host_offload(optax_rms.rmsprop(0.1), memory_kind="unpinned_host")


class _Memory:
  def __init__(self, kind):
    self.kind = kind


class _DeviceWithoutHostMemory:
  platform = "tpu-like"

  def addressable_memories(self):
    return [_Memory("device")]

  def default_memory(self):
    return _Memory("device")

  def __str__(self):
    return "FakeDevice(id=0)"


def test_a_backend_without_pinned_host_is_named(monkeypatch):
  monkeypatch.setattr(jax, "devices", lambda *a: [_DeviceWithoutHostMemory()])
  with pytest.raises(ValueError, match="'tpu-like' backend .* no 'pinned_host'"):
    optax_rms.host_offload(optax_rms.rmsprop(0.1))


@pytest.mark.multidevice
def test_state_shardings_refuse_a_memory_kind_the_devices_lack():
  params = jax.device_put(_params(), _param_shardings(_mesh()))
  tx = optax_rms.rmsprop(0.1)
  for helper in (
    lambda **kw: sharding.state_shardings(tx, params, **kw),
    lambda **kw: sharding.zero1_state_shardings(tx, params, "data", **kw),
  ):
    with pytest.raises(ValueError, match="memory_kind='hbm'.*'pinned_host'"):
      helper(memory_kind="hbm")
    unpinned = helper(memory_kind="unpinned_host")
    assert {s.memory_kind for s in jax.tree.leaves(unpinned)} == {"unpinned_host"}


# A donated step, with and without out_shardings: run in a subprocess, since
# without them jax 0.10 once aborted the process (a donated host buffer handed
# to a device output: "PjRtBuffer's memory kind does not match ...").
_DONATED_STEP = """
import sys
import jax, jax.numpy as jnp, optax, optax_rms
from jax.sharding import SingleDeviceSharding
tx = optax_rms.host_offload(optax_rms.rmsprop(0.01, centered=True, momentum=0.9))
params = {"w": jnp.ones((16, 64)), "b": jnp.ones(64)}
device = SingleDeviceSharding(jax.devices()[0])

def make_step():  # a new function each time: jax reuses a traced one's jaxpr
  def step(params, state):
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    return updates, state  # a device output first, of the state buffers' shapes

  return step

state = tx.init(params)
out = (device, jax.tree.map(lambda x: x.sharding, state))
given = jax.jit(make_step(), out_shardings=out, donate_argnums=(1,))
for _ in range(2):
  _, state = given(params, state)
kinds = sorted({x.sharding.memory_kind for x in jax.tree.leaves(state)})
print("with out_shardings:", kinds)
sys.stdout.flush()
bare = jax.jit(make_step(), donate_argnums=(1,))
for _ in range(2):
  _, state = bare(params, state)
print("without out_shardings: ran")
"""


def test_a_donated_step_without_out_shardings_is_a_python_error():
  run = subprocess.run(
    [sys.executable, "-c", _DONATED_STEP],
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert "with out_shardings: ['pinned_host']" in run.stdout, run.stderr[-2000:]
  # A Python exception (exit status 1), not an abort (a negative status).
  assert run.returncode == 1, (run.returncode, run.stderr[-2000:])
  assert "without out_shardings: ran" not in run.stdout
  error = re.search(r"^ValueError: optax_rms\.host_offload: .*$", run.stderr, re.M)
  assert error is not None, run.stderr[-2000:]
  assert "donates arguments but gives no out_shardings" in error.group()
  assert "state_shardings(tx, params, memory_kind='pinned_host')" in error.group()


_EXPLICIT_MESH_STEP = """
import jax, jax.numpy as jnp, optax_rms
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Explicit,))
with jax.set_mesh(mesh):
  tx = optax_rms.host_offload(optax_rms.rmsprop(0.01, momentum=0.9))
  params = jax.device_put({"w": jnp.ones((16, 64))}, NamedSharding(mesh, P()))
  state = tx.init(params)

  def step(params, state):
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    return updates, state

  f = jax.jit(step, donate_argnums=(1,))
  for _ in range(2):
    updates, state = f(params, state)
  print(sorted({x.sharding.memory_kind for x in jax.tree.leaves(state)}))
"""


def test_on_an_explicit_mesh_a_donated_step_needs_no_out_shardings():
  """There jit derives each output's sharding, memory kind included, and
  pairs donated buffers by memory: the check above lets such a step run.
  In a subprocess, as above, in case a jax version aborts."""
  run = subprocess.run(
    [sys.executable, "-c", _EXPLICIT_MESH_STEP],
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
  assert run.stdout.strip().splitlines()[-1] == "['pinned_host']"


def test_a_step_that_donates_nothing_needs_no_out_shardings():
  """The control: without donation a plain jax.jit step is fine."""
  tx = optax_rms.host_offload(optax_rms.rmsprop(0.01, momentum=0.9))
  params = _params()
  state = tx.init(params)
  params, state = _run(tx, params, state, _make_step(tx))
  assert _kinds(state) == {HOST}


# --- the benchmark's smoke test ----------------------------------------------------


def test_the_offload_benchmark_runs_both_modes():
  root = str(pathlib.Path(__file__).resolve().parent.parent)
  sys.path.insert(0, root)
  try:
    bench = importlib.import_module("benchmarks.offload.run")
  finally:
    sys.path.remove(root)
  argv = ["--layers=1", "--d-model=32", "--vocab=16", "--tokens=8", "--steps=2"]
  argv += ["--warmup=1", "--bandwidth-reps=2"]
  results = {
    mode: bench.run_mode(bench.parse_args([*argv, f"--mode={mode}"]))
    for mode in ("device", "offload")
  }
  assert results["device"]["state_memory_kinds"] == ["device"]
  assert results["offload"]["state_memory_kinds"] == [HOST]
  assert results["device"]["loss"] == results["offload"]["loss"]
  assert results["offload"]["hlo_host_annotations"] > 0
  assert results["device"]["hlo_host_annotations"] == 0
  text = bench.render(results["device"], results["offload"], bench.parse_args(argv))
  assert "bound S/B_h2d + S/B_d2h" in text
