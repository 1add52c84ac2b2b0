r"""Keep the optimizer state in host memory between steps.

When the optimizer state does not fit on the accelerator beside the
parameters, activations and gradients, it can live in the host's pinned
memory and visit the device only for the update: per step the state's bytes
cross the host<->device link once each way, so a step costs at least
:math:`2 S / B` more, for :math:`S` bytes of state (per device) and a link of
:math:`B` bytes/s, unless XLA overlaps the copies with other work
(``docs/distributed.md`` has the recipe and the arithmetic).

JAX names the memories of a device by kind (``device.addressable_memories()``:
``device``, ``pinned_host``, ``unpinned_host`` on the CPU and on GPUs) and
moves an array between them with ``jax.device_put``, also inside ``jit``,
where the move is part of the compiled program. Inside ``jit`` an array can be
placed in ``pinned_host`` memory only (``jax.memory.Space.Host``): jax 0.10
lowers an output asked for in ``unpinned_host`` to device memory, so that kind
is refused.
"""

import sys
import types
from typing import Any, NamedTuple

import jax
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec, SingleDeviceSharding

from optax_rms import _checks, _validate
from optax_rms._types import (
  GradientTransformation,
  GradientTransformationExtraArgs,
  OptState,
)

__all__ = ["HostOffloadState", "host_offload"]

# The one host memory kind that jit can place an array in (jax.memory.Space.Host).
_JIT_HOST_KIND = "pinned_host"


class HostOffloadState(NamedTuple):
  """The state of `host_offload`.

  Attributes:
    inner_state: the inner transformation's state, every array of it in host
      memory (the sharding's ``memory_kind``), with the spec it would have on
      the device.
  """

  inner_state: OptState


def _memory_kinds(device: Any) -> tuple[str, ...]:
  return tuple(m.kind for m in device.addressable_memories())


def _describe(device: Any) -> str:
  return f"the {device.platform!r} backend (device {device})"


def check_memory_kind(memory_kind: Any, device: Any, name: str = "memory_kind") -> str:
  """``memory_kind`` if ``device`` has a memory of that kind, else an error.

  Args:
    memory_kind: the kind asked for.
    device: the device whose memories are looked up.
    name: the argument's name, for the messages.

  Returns:
    ``memory_kind``.

  Raises:
    TypeError: ``memory_kind`` is not a str.
    ValueError: the device has no memory of that kind (its kinds listed).
  """
  if not isinstance(memory_kind, str):
    raise TypeError(
      f"{name} must be a memory kind (a str such as 'pinned_host'), got "
      f"{type(memory_kind).__name__} {memory_kind!r}."
    )
  kinds = _memory_kinds(device)
  if memory_kind not in kinds:
    raise ValueError(
      f"{name}={memory_kind!r}: {_describe(device)} has no memory of that kind; "
      f"its memory kinds are {kinds} (device.addressable_memories())."
    )
  return memory_kind


def _check_offload_kind(memory_kind: Any) -> str:
  device = jax.devices()[0]
  kinds = _memory_kinds(device) if isinstance(memory_kind, str) else ()
  if memory_kind == _JIT_HOST_KIND and memory_kind not in kinds:
    raise ValueError(
      f"host_offload: {_describe(device)} has no 'pinned_host' memory to keep "
      f"the optimizer state in; its memory kinds are {kinds}. Keep the state "
      "on the device there (drop host_offload)."
    )
  check_memory_kind(memory_kind, device)
  if memory_kind == device.default_memory().kind:
    raise ValueError(
      f"memory_kind={memory_kind!r} is the device's own memory (where the state "
      f"is without host_offload); give a host memory kind: {_JIT_HOST_KIND!r}."
    )
  if memory_kind != _JIT_HOST_KIND:
    raise ValueError(
      f"memory_kind={memory_kind!r}: jax.jit can place arrays in host memory of "
      f"kind {_JIT_HOST_KIND!r} only (jax.memory.Space.Host; an output asked for "
      f"in {memory_kind!r} comes back in device memory); {_describe(device)} has "
      f"{kinds}."
    )
  return memory_kind


def _to_host(state: Any, memory_kind: str) -> Any:
  """``state`` in host memory, each array keeping its sharding's spec.

  Under ``jit`` (tracers) the move is ``jax.memory.Space.Host``, and the
  shardings are jit's (its ``out_shardings``). Eagerly each committed array
  keeps its sharding with the memory kind changed; an uncommitted one (a
  scalar such as ``count``, made without a device) would be committed to the
  default device by the move, which a step on a mesh refuses: it goes where
  the state's first committed array is instead, replicated over its mesh.
  """
  leaves, treedef = jax.tree.flatten(state)
  concrete = [x for x in leaves if not isinstance(x, jax.core.Tracer)]
  committed = [x for x in concrete if getattr(x, "committed", False)]
  anchor: Any = jax.memory.Space.Host
  if committed and isinstance(committed[0].sharding, NamedSharding):
    anchor = NamedSharding(
      committed[0].sharding.mesh, PartitionSpec(), memory_kind=memory_kind
    )
  elif committed and len(committed[0].sharding.device_set) == 1:
    (device,) = committed[0].sharding.device_set
    anchor = SingleDeviceSharding(device, memory_kind=memory_kind)

  def place(x: Any) -> Any:
    if isinstance(x, jax.core.Tracer):
      return jax.device_put(x, jax.memory.Space.Host)
    if getattr(x, "committed", False):
      return jax.device_put(x, x.sharding.with_memory_kind(memory_kind))
    return jax.device_put(x, anchor)

  return jax.tree.unflatten(treedef, [place(x) for x in leaves])


def _tracing_jit_info() -> tuple[Any, Any] | None:
  """The arguments of the outermost ``jax.jit`` now tracing, if any.

  ``(PjitInfo, context mesh)`` read from jax's own tracing frame
  (``jax._src.pjit._trace_for_jit``, jax 0.10): donation and
  ``out_shardings`` are jit's arguments, not visible to the traced function
  otherwise. None outside ``jit``, or where jax's internals differ (then
  nothing is checked).
  """
  frame: types.FrameType | None = sys._getframe(1)
  found = None
  while frame is not None:
    code = frame.f_code
    if code.co_name == "_trace_for_jit" and frame.f_globals.get("__name__") == (
      "jax._src.pjit"
    ):
      found = frame  # keep walking: the outermost jit is the one that runs
    frame = frame.f_back
  if found is None or "ji" not in found.f_locals:
    return None
  return found.f_locals["ji"], found.f_locals.get("ctx_mesh")


def _check_donation(name: str) -> None:
  """ValueError where the enclosing ``jax.jit`` donates arguments but leaves
  an output's sharding unspecified (no ``out_shardings``).

  jax 0.10 then pairs donated buffers with outputs by shape and dtype alone,
  not by memory, and can hand a device output a donated host buffer or the
  reverse: the process aborts ("PjRtBuffer's memory kind does not match
  sharding's memory kind"), with no Python error. With every output's
  sharding given (or on a mesh of explicit axes, where jit derives them with
  their memory kinds) donation pairs memories correctly. Checked while jit
  traces the update: a step function that jax traced before (the same
  function jitted again with other options) may come from jax's trace cache
  and is then not checked again.
  """
  info = _tracing_jit_info()
  if info is None:
    return
  ji, mesh = info
  donates = bool(
    getattr(ji, "donate_argnums", ()) or getattr(ji, "donate_argnames", ())
  )
  leaves = getattr(ji, "out_shardings_leaves", ())
  unspecified = any(type(s).__name__ == "UnspecifiedValue" for s in leaves)
  placed = bool(getattr(ji, "device", None) or getattr(ji, "backend", None))
  explicit = (
    mesh is not None
    and not getattr(mesh, "empty", True)
    and AxisType.Explicit in tuple(getattr(mesh, "axis_types", ()))
  )
  if donates and unspecified and not placed and not explicit:
    raise ValueError(
      f"{name}: this jax.jit donates arguments but gives no out_shardings. jax "
      "then pairs donated buffers with outputs by shape and dtype alone, not "
      "by memory, and can hand a device output a donated host buffer of the "
      "state (or a host output a donated device buffer), which aborts the "
      "process (\"PjRtBuffer's memory kind does not match sharding's memory "
      "kind\"). Give the step's out_shardings, with the state's from "
      "optax_rms.sharding.state_shardings(tx, params, memory_kind="
      "'pinned_host') (or zero1_state_shardings), or do not donate."
    )


def host_offload(
  inner: GradientTransformation, memory_kind: str = "pinned_host"
) -> GradientTransformationExtraArgs:
  """Keeps ``inner``'s state in host memory; each update visits the device.

  ``init`` places every array of ``inner``'s state (the scalars such as
  ``count`` too, so that one rule holds for every leaf) in ``memory_kind``
  memory, keeping the sharding it would have on the device (only the
  sharding's ``memory_kind`` changes). ``update`` moves the state to device
  memory, runs ``inner.update`` there, and moves the new state back: inside
  the user's ``jax.jit`` these moves are part of the compiled step, and with
  the state donated (``donate_argnums``) the new state takes the old one's
  host buffers. The numbers are ``inner``'s, bit for bit: only where the
  state waits between steps changes.

  Under ``jit`` give the state's shardings with the memory kind, from
  ``optax_rms.sharding.state_shardings(tx, params, memory_kind="pinned_host")``
  (or ``zero1_state_shardings``), as ``out_shardings`` of a jitted
  ``tx.init`` and as in/out shardings of the train step; an eager
  ``tx.init(params)`` places the state itself. A step that donates the state
  needs those ``out_shardings``: without them jax 0.10 pairs donated buffers
  with outputs by shape and dtype alone, and can give a device output a
  donated host buffer (the process aborts: "PjRtBuffer's memory kind does
  not match sharding's memory kind"); ``update`` raises a ValueError instead
  when ``jax.jit`` traces it with arguments donated and no ``out_shardings``.

  Args:
    inner: any optax transformation.
    memory_kind: the host memory to keep the state in; ``"pinned_host"`` (the
      one host kind ``jax.jit`` can place arrays in).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    `HostOffloadState`; extra arguments are passed to ``inner``.

  Raises:
    TypeError: ``inner`` is not a transformation, ``memory_kind`` is not a
      str; at ``update``, a state that is not a `HostOffloadState`.
    ValueError: the default device has no memory of that kind (its kinds are
      listed), the backend has no ``pinned_host`` memory (the backend named),
      or the kind is the device's own memory or one jit cannot place arrays in;
      at ``update``, traced by a ``jax.jit`` that donates arguments without
      ``out_shardings`` (see above).

  Examples:
    >>> import jax, jax.numpy as jnp, optax, optax_rms
    >>> params = {"w": jnp.ones((4, 3))}
    >>> tx = optax_rms.host_offload(optax_rms.rmsprop(1e-2, momentum=0.9))
    >>> state = tx.init(params)
    >>> state.inner_state.nu["w"].sharding.memory_kind
    'pinned_host'
    >>> @jax.jit
    ... def step(params, state):
    ...   grads = jax.tree.map(jnp.ones_like, params)
    ...   updates, state = tx.update(grads, state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> params, state = step(params, state)
    >>> state.inner_state.momentum["w"].sharding.memory_kind
    'pinned_host'
    >>> params["w"].sharding.memory_kind
    'device'
    >>> print(f"{params['w'][0, 0]:.4f}")
    0.9684
  """
  name = "optax_rms.host_offload"
  _validate.check_inner(name, inner)
  memory_kind = _check_offload_kind(memory_kind)
  inner = optax.with_extra_args_support(inner)
  host = jax.memory.Space.Host  # the space of kind _JIT_HOST_KIND

  def init_fn(params: optax.Params) -> HostOffloadState:
    return HostOffloadState(_to_host(inner.init(params), memory_kind))

  def update_fn(
    updates: optax.Updates,
    state: HostOffloadState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, HostOffloadState]:
    _checks.check_wrapper_state(name, state, HostOffloadState)
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(state)):
      _check_donation(name)  # while jit traces the step
    on_device = jax.device_put(state.inner_state, jax.memory.Space.Device)
    updates, new_state = inner.update(updates, on_device, params, **extra_args)
    return updates, HostOffloadState(jax.device_put(new_state, host))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
