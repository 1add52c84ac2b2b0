r"""Where the optimizer state lives on a mesh: mirrored, or ZeRO-1 sharded.

RMSprop keeps one to three buffers per parameter (``nu``; ``mu`` when
centered; the momentum buffer), each the parameter's shape. By default they
take the parameter's sharding (:func:`state_shardings`), so in plain data
parallelism, where the parameters are replicated over the data axis, every
data-parallel device holds a full copy of the state too. ZeRO stage 1
(Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models") splits the optimizer state across the data-parallel
devices instead (:func:`zero1_state_shardings`): each device updates its
slice of the state and the updates are all-gathered back to the parameters'
sharding.

Memory per device, for a parameter of :math:`N` elements of :math:`b` bytes
whose sharding splits it over :math:`k` devices (the product of the sizes of
the mesh axes in its ``PartitionSpec``; :math:`k=1` when replicated), with
:math:`m` state buffers (1 plain, 2 centered or momentum, 3 both) and a data
axis of size :math:`D`:

.. math::
  \text{params} = \frac{N b}{k},\qquad
  \text{state (mirrored)} = \frac{m N b}{k},\qquad
  \text{state (ZeRO-1)} = \frac{m N b}{k D}

(the last for leaves that divide, see the rule below; the others keep
:math:`m N b / k`). For 1B float32 parameters replicated over :math:`D = 8`
devices: 4 GB of parameters and 4 / 8 / 8 / 12 GB of plain / centered /
momentum / centered + momentum state per device, or 0.5 / 1 / 1 / 1.5 GB with
ZeRO-1. :func:`bytes_per_device` measures it (before allocating, too). The
price is communication: each step all-gathers the updates (:math:`(D-1)/D`
of the parameters' bytes received per device); see ``docs/distributed.md``.

**The ZeRO-1 rule** (:func:`zero1_sharding`, per state leaf): keep the
parameter's ``PartitionSpec`` and add the data axis to one dimension: among
the dimensions whose size is divisible by (the mesh axes already on it) x
(the data-axis size), the one with the largest per-device extent (the first
on ties). A leaf with no such dimension (odd sizes, scalars) keeps the
parameter's sharding, as does a leaf already sharded over the data axis (FSDP)
and every leaf when the data axis has size 1. Non-parameter leaves of the
state (``count``, injected hyperparameters) are replicated; a leaf of a
params-shaped part whose shape differs from its parameter's starts from
replicated instead of the parameter's sharding.

Both functions return a pytree of ``NamedSharding`` shaped like the state, for
``out_shardings`` of a jitted ``tx.init`` and for the in/out shardings of the
train step. With ``AxisType.Auto`` meshes the state only gets these shardings
when they are given (a plain ``jax.jit(tx.init)`` does not see the params'
sharding); with ``AxisType.Explicit`` the mirrored placement is what
``jax.jit(tx.init)`` produces anyway, and a ZeRO-1 step must put the updates
back on the parameters' sharding (``out_shardings`` of the step, or
``jax.sharding.reshard``) or the parameters would inherit the state's split.
``memory_kind="pinned_host"`` puts every state leaf in host memory, specs
unchanged: the shardings of ``optax_rms.host_offload``'s state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from optax_rms._offload import check_memory_kind
from optax_rms._pack import PackedLeaves

__all__ = [
  "bytes_per_device",
  "state_shardings",
  "zero1_sharding",
  "zero1_state_shardings",
]

Initable: TypeAlias = optax.GradientTransformation | Callable[[optax.Params], Any]


def _axes(entry: Any) -> tuple[str, ...]:
  """The mesh axes of one PartitionSpec entry (None, a name, or a tuple)."""
  if entry is None:
    return ()
  if isinstance(entry, str):
    return (entry,)
  return tuple(entry)


def _check_axis(mesh: Any, data_axis: Any) -> None:
  if not isinstance(data_axis, str):
    raise TypeError(
      f"data_axis must be a mesh axis name (a str), got {data_axis!r} "
      f"({type(data_axis).__name__})."
    )
  if data_axis not in mesh.axis_names:
    raise ValueError(
      f"data_axis={data_axis!r} is not an axis of the parameters' mesh; its axes "
      f"are {tuple(mesh.axis_names)}."
    )


def zero1_sharding(
  sharding: NamedSharding, shape: Sequence[int], data_axis: str
) -> NamedSharding:
  """The ZeRO-1 sharding of one state leaf, from its parameter's sharding.

  Adds ``data_axis`` to the dimension of ``shape`` with the largest per-device
  extent among those that stay evenly divisible (the first on ties); returns
  ``sharding`` unchanged when no dimension divides, when the leaf is already
  sharded over ``data_axis``, or when that axis has size 1. A dimension already
  split over other mesh axes keeps them, major, with the data axis added minor
  (``('model', 'data')``): a device's state slice is then a piece of the
  parameter slice it holds.

  Args:
    sharding: the parameter's sharding, a ``NamedSharding``.
    shape: the leaf's (the parameter's) shape.
    data_axis: the data-parallel mesh axis to split the state over.

  Returns:
    A ``NamedSharding`` on the same mesh (and memory kind).

  Raises:
    TypeError: ``sharding`` is not a ``NamedSharding``, or ``data_axis`` is
      not a str.
    ValueError: ``data_axis`` is not an axis of the mesh, or the spec has more
      entries than ``shape`` has dimensions.

  Examples:
    >>> import jax
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> from optax_rms import sharding
    >>> mesh = jax.make_mesh((2, 4), ("data", "model"))
    >>> w = NamedSharding(mesh, P(None, "model"))
    >>> sharding.zero1_sharding(w, (1024, 512), "data").spec
    P('data', 'model')
    >>> sharding.zero1_sharding(w, (3, 512), "data").spec  # 3 is odd: dim 1
    P(None, ('model', 'data'))
    >>> sharding.zero1_sharding(NamedSharding(mesh, P()), (), "data").spec
    P()
  """
  if not isinstance(sharding, NamedSharding):
    raise TypeError(
      f"sharding must be a jax.sharding.NamedSharding (ZeRO-1 needs a mesh with "
      f"a data axis), got {type(sharding).__name__}: {sharding!r}."
    )
  mesh = sharding.mesh
  _check_axis(mesh, data_axis)
  shape = tuple(int(d) for d in shape)
  spec = tuple(sharding.spec)
  if len(spec) > len(shape):
    raise ValueError(
      f"sharding has {len(spec)} PartitionSpec entries ({sharding.spec}) for a "
      f"leaf of shape {shape}."
    )
  spec += (None,) * (len(shape) - len(spec))
  size = mesh.shape[data_axis]
  if size == 1 or any(data_axis in _axes(entry) for entry in spec):
    return sharding
  best, best_extent = None, 0
  for dim, (n, entry) in enumerate(zip(shape, spec, strict=True)):
    if entry is PartitionSpec.UNCONSTRAINED:
      continue
    split = math.prod(mesh.shape[a] for a in _axes(entry))
    if n % (split * size) == 0 and n // split > best_extent:
      best, best_extent = dim, n // split
  if best is None:
    return sharding
  new_spec = list(spec)
  new_axes = (*_axes(spec[best]), data_axis)
  new_spec[best] = new_axes[0] if len(new_axes) == 1 else new_axes
  return NamedSharding(mesh, PartitionSpec(*new_spec), memory_kind=sharding.memory_kind)


def _in_memory(state_shardings: Any, memory_kind: str | None) -> Any:
  """``state_shardings`` with every leaf in ``memory_kind`` (None: as they are)."""
  if memory_kind is None:
    return state_shardings
  leaves = jax.tree.leaves(state_shardings)
  # A device of the mesh that this process drives (the others' memories are
  # the same kinds).
  here = jax.process_index()
  devices = leaves[0].mesh.devices.flat if leaves else ()
  device = next((d for d in devices if d.process_index == here), jax.local_devices()[0])
  kind = check_memory_kind(memory_kind, device)
  return jax.tree.map(lambda s: s.with_memory_kind(kind), state_shardings)


def _leaf_path(path: Any) -> str:
  return jax.tree_util.keystr(path) or "<root>"


def _param_shardings(params: optax.Params, shardings: Any) -> tuple[Any, Any]:
  """Validated (param shardings pytree, mesh) for the state helpers."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if isinstance(leaf, jax.sharding.Sharding):
      raise TypeError(
        f"params must hold arrays or jax.ShapeDtypeStruct (the state's shapes "
        f"come from them), got a {type(leaf).__name__} at {_leaf_path(path)}; "
        "pass a pytree of shardings as shardings=..., next to the params."
      )
    if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
      raise TypeError(
        f"params must hold arrays or jax.ShapeDtypeStruct, got "
        f"{type(leaf).__name__} at {_leaf_path(path)}."
      )
  if shardings is None:
    where = "params"

    def own(path, leaf):
      s = getattr(leaf, "sharding", None)
      if s is None:
        raise TypeError(
          f"params leaf {_leaf_path(path)} has no sharding; place the params "
          "with jax.device_put(params, NamedSharding(mesh, spec)) or pass "
          "shardings=..."
        )
      return s

    shardings = jax.tree_util.tree_map_with_path(own, params)
  elif isinstance(shardings, jax.sharding.Sharding):
    where = "shardings"
    shardings = jax.tree.map(lambda _: shardings, params)
  else:
    where = "shardings"
    # Any: jax's PyTreeDef stub has neither __ne__ nor flatten_up_to for mypy.
    params_def: Any = jax.tree.structure(params)
    shardings_def: Any = jax.tree.structure(
      shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)
    )
    if params_def != shardings_def:
      raise ValueError(
        f"shardings must have the structure of params (or be one sharding for "
        f"all), got {shardings_def} for params {params_def}."
      )
  mesh = None
  flat = jax.tree_util.tree_leaves_with_path(
    shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)
  )
  for path, s in flat:
    if not isinstance(s, NamedSharding):
      raise TypeError(
        f"{where} must give a jax.sharding.NamedSharding for every parameter, "
        f"got {type(s).__name__} at {_leaf_path(path)}; place the params on a "
        "mesh with jax.device_put(params, NamedSharding(mesh, spec))."
      )
    if mesh is None:
      mesh = s.mesh
    elif s.mesh != mesh:
      raise ValueError(
        f"{where}: every parameter must be on the same mesh; "
        f"{_leaf_path(path)} is on {s.mesh}, the first one on {mesh}."
      )
  if mesh is None:
    raise ValueError(f"{where}: no parameters, so no mesh to place the state on.")
  return shardings, mesh


def _map_state(
  tx: Initable,
  params: optax.Params,
  shardings: Any,
  leaf_fn: Callable[[Any, NamedSharding], NamedSharding],
  check_mesh: Callable[[Any], None] = lambda mesh: None,
) -> Any:
  shardings, mesh = _param_shardings(params, shardings)
  check_mesh(mesh)
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  init = tx.init if hasattr(tx, "init") else tx
  state = jax.eval_shape(init, abstract)
  replicated = NamedSharding(mesh, PartitionSpec())

  def per_leaf(leaf, param_sharding, param):
    # A per-parameter statistic of another shape than its parameter (e.g.
    # per-block scales) cannot take the parameter's spec: it starts replicated.
    base = param_sharding if leaf.shape == param.shape else replicated
    return leaf_fn(leaf, base)

  is_packed = lambda x: isinstance(x, PackedLeaves)
  if any(map(is_packed, jax.tree.leaves(state, is_leaf=is_packed))):
    return _map_packed_state(state, abstract, shardings, per_leaf, leaf_fn, replicated)
  return optax.tree_map_params(
    tx,
    per_leaf,
    state,
    shardings,
    abstract,
    transform_non_params=lambda _: replicated,
  )


def _map_packed_state(
  state: Any,
  abstract: Any,
  shardings: Any,
  per_leaf: Callable[[Any, Any, Any], NamedSharding],
  leaf_fn: Callable[[Any, NamedSharding], NamedSharding],
  replicated: NamedSharding,
) -> Any:
  """A state holding ``optax_rms.pack_small``'s buffers (optax's
  ``tree_map_params`` cannot see through it): each `PackedLeaves` buffer
  finds its parameters through its ``segments`` (see :func:`_map_packed`); a
  part of the state shaped like the parameters (e.g. ``optax.MultiSteps``'
  accumulated gradients, outside the pack) takes theirs, as
  ``tree_map_params`` would; the rest is replicated.
  """
  params = jax.tree.leaves(abstract)
  param_shardings = jax.tree.leaves(
    shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)
  )
  params_def: Any = jax.tree.structure(abstract)  # jax's stub lacks __ne__

  def params_shaped(x: Any) -> bool:
    if isinstance(x, PackedLeaves) or jax.tree.structure(x) != params_def:
      return False
    leaves = jax.tree.leaves(x)
    # A scalar stands for a leaf without a buffer (kahan_summation's
    # compensation of a float32 leaf); per_leaf replicates it.
    return bool(leaves) and all(
      getattr(a, "shape", None) in (p.shape, ())
      for a, p in zip(leaves, params, strict=True)
    )

  def node(x: Any) -> Any:
    if isinstance(x, PackedLeaves):
      return _map_packed(x, params, param_shardings, per_leaf, leaf_fn, replicated)
    if not params_shaped(x):
      return jax.tree.map(lambda _: replicated, x)
    return jax.tree.unflatten(
      params_def,
      [
        per_leaf(a, s, p)
        for a, s, p in zip(jax.tree.leaves(x), param_shardings, params, strict=True)
      ],
    )

  return jax.tree.map(
    node, state, is_leaf=lambda x: isinstance(x, PackedLeaves) or params_shaped(x)
  )


def _map_packed(
  packed: PackedLeaves,
  params: list[Any],
  param_shardings: list[Any],
  per_leaf: Callable[[Any, Any, Any], NamedSharding],
  leaf_fn: Callable[[Any, NamedSharding], NamedSharding],
  replicated: NamedSharding,
) -> PackedLeaves:
  """The shardings of one `PackedLeaves` buffer, from its ``segments``.

  A large leaf holds one parameter (``segments`` gives its index in the
  parameters' tree) and takes the rule of an unpacked leaf: its parameter's
  sharding where the shapes agree (``nu``, ``mu``, the momentum), replicated
  where they do not (8-bit per-block scales). A flat vector of small
  parameters starts from replicated. A node whose ``segments`` are missing
  (built by hand) or do not fit these parameters is replicated.
  """
  leaves = [*packed.large, *packed.small]
  segments = packed.segments
  fits = (
    segments is not None
    and len(segments) == len(leaves)
    and all(len(seg) == 1 for seg in segments[: len(packed.large)])
    and all(
      0 <= i < len(params) and tuple(shape) == tuple(params[i].shape)
      for seg in segments
      for i, shape in seg
    )
  )
  if not fits:
    return jax.tree.map(lambda _: replicated, packed)
  assert segments is not None  # for mypy: `fits` says so
  large = [
    per_leaf(leaf, param_shardings[i], params[i])
    for leaf, (((i, _),)) in zip(packed.large, segments, strict=False)
  ]
  small = [leaf_fn(leaf, replicated) for leaf in packed.small]
  return jax.tree.unflatten(jax.tree.structure(packed), large + small)


def state_shardings(
  tx: Initable,
  params: optax.Params,
  *,
  shardings: NamedSharding | Any | None = None,
  memory_kind: str | None = None,
) -> Any:
  """Shardings of ``tx``'s state that mirror the params (the default placement).

  Every params-shaped part of the state (``nu``, ``mu``, the momentum buffer;
  for any optax state, what ``optax.tree_map_params`` finds) gets its
  parameter's sharding; the rest (``count``, injected hyperparameters), and
  any leaf of such a part whose shape is not its parameter's, is replicated
  on the params' mesh. Per device the state then takes ``m`` times
  the parameters' bytes (``m`` buffers). Give it as ``out_shardings`` of a
  jitted ``tx.init`` under ``AxisType.Auto`` meshes, where jit does not carry
  the params' sharding over to the new buffers by itself.

  Args:
    tx: an optax transformation (anything with ``init``) or an init function.
    params: the parameters, as arrays or ``jax.ShapeDtypeStruct`` (their
      shapes and dtypes give the state's; their ``.sharding`` is used unless
      ``shardings`` is given).
    shardings: the params' shardings: a pytree of ``NamedSharding`` with the
      structure of ``params``, or one ``NamedSharding`` for all of them.
    memory_kind: the memory every state leaf lives in (``"pinned_host"`` for
      the state of ``optax_rms.host_offload``); default: the params'
      shardings' (the device's). One of the kinds of the mesh's devices
      (``device.addressable_memories()``).

  Returns:
    A pytree of ``NamedSharding`` with the structure of ``tx.init(params)``.

  Raises:
    TypeError: a parameter without a ``NamedSharding`` (name of the leaf
      given), or ``params`` holding shardings instead of arrays.
    ValueError: ``shardings`` not shaped like ``params``, parameters on
      different meshes, or a ``memory_kind`` the devices do not have (their
      kinds listed).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    >>> import optax_rms
    >>> from optax_rms import sharding
    >>> mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    >>> params = jax.device_put(
    ...   {"w": jnp.zeros((8, 16))}, {"w": NamedSharding(mesh, P(None, "model"))}
    ... )
    >>> tx = optax_rms.rmsprop(1e-3, momentum=0.9)
    >>> state = jax.jit(tx.init, out_shardings=sharding.state_shardings(tx, params))(
    ...   params
    ... )
    >>> state.nu["w"].sharding.spec, state.momentum["w"].sharding.spec
    (P(None, 'model'), P(None, 'model'))
    >>> state.count.sharding.is_fully_replicated
    True
  """
  state = _map_state(tx, params, shardings, lambda _, s: s)
  return _in_memory(state, memory_kind)


def zero1_state_shardings(
  tx: Initable,
  params: optax.Params,
  data_axis: str,
  *,
  shardings: NamedSharding | Any | None = None,
  memory_kind: str | None = None,
) -> Any:
  r"""ZeRO-1 shardings of ``tx``'s state: split over the data axis as well.

  As :func:`state_shardings`, then each params-shaped state leaf is further
  split over ``data_axis`` by :func:`zero1_sharding` (along its largest
  per-device dimension that divides evenly; leaves that do not divide, and
  non-parameter leaves like ``count``, keep the params' / a replicated
  sharding). Per device, a state of ``m`` buffers for a parameter of ``N``
  elements of ``b`` bytes split over ``k`` devices takes ``m N b / (k D)``
  bytes instead of ``m N b / k``, ``D`` the size of ``data_axis``.

  Use it for the state's ``out_shardings`` in a jitted ``tx.init`` and for the
  state's in/out shardings in the train step, while the params keep theirs:
  XLA then computes each state slice where it lives and all-gathers the
  updates over ``data_axis`` (and may turn the gradients' all-reduce into a
  reduce-scatter). The numbers are those of the unsharded optimizer (to the
  rounding of the gradient reduction, which any data parallelism has).

  Args:
    tx: an optax transformation (anything with ``init``) or an init function.
    params: the parameters, as arrays or ``jax.ShapeDtypeStruct`` (their
      shapes and dtypes give the state's; their ``.sharding`` is used unless
      ``shardings`` is given).
    data_axis: the name of the data-parallel mesh axis.
    shardings: the params' shardings: a pytree of ``NamedSharding`` with the
      structure of ``params``, or one ``NamedSharding`` for all of them.
    memory_kind: the memory every state leaf lives in (``"pinned_host"`` for
      the state of ``optax_rms.host_offload``); default: the params'
      shardings' (the device's). One of the kinds of the mesh's devices
      (``device.addressable_memories()``).

  Returns:
    A pytree of ``NamedSharding`` with the structure of ``tx.init(params)``.

  Raises:
    TypeError: a parameter without a ``NamedSharding``, ``params`` holding
      shardings instead of arrays, or ``data_axis`` not a str.
    ValueError: ``data_axis`` is not an axis of the params' mesh (the axes are
      listed), ``shardings`` not shaped like ``params``, parameters on
      different meshes, or a ``memory_kind`` the devices do not have.

  Examples:
    A 1M-parameter layer replicated over 8 devices, with momentum (2 buffers):

    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    >>> import optax_rms
    >>> from optax_rms import sharding
    >>> mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    >>> params = jax.device_put(
    ...   {"w": jnp.zeros((1024, 1024)), "b": jnp.zeros(3)}, NamedSharding(mesh, P())
    ... )
    >>> tx = optax_rms.rmsprop(1e-3, momentum=0.9)
    >>> zero1 = sharding.zero1_state_shardings(tx, params, "data")
    >>> zero1.nu["w"].spec, zero1.nu["b"].spec  # 3 does not divide by 8
    (P('data', None), P())
    >>> state = jax.jit(tx.init, out_shardings=zero1)(params)
    >>> state.momentum["w"].addressable_shards[0].data.shape
    (128, 1024)
    >>> mirrored = sharding.state_shardings(tx, params)
    >>> abstract = jax.eval_shape(tx.init, params)
    >>> print(sharding.bytes_per_device(abstract, mirrored))  # 2 * 4 MiB + ...
    8388636
    >>> print(sharding.bytes_per_device(state))  # ... / 8 for w
    1048604
  """
  # Leaves shaped otherwise than their parameter start from replicated.
  leaf_fn = lambda leaf, s: zero1_sharding(s, leaf.shape, data_axis)
  state = _map_state(
    tx, params, shardings, leaf_fn, lambda mesh: _check_axis(mesh, data_axis)
  )
  return _in_memory(state, memory_kind)


def bytes_per_device(tree: Any, shardings: Any | None = None) -> int:
  """The most bytes any one device holds for the arrays of ``tree``.

  Sums, per device, the size of the shard of every leaf it holds (from the
  sharding, so it also works for ``jax.ShapeDtypeStruct`` before anything is
  allocated, and counts every device of a multi-process mesh), and returns
  the maximum over devices.

  Args:
    tree: a pytree of ``jax.Array`` or ``jax.ShapeDtypeStruct``.
    shardings: the leaves' shardings, a pytree with the structure of ``tree``;
      default: each leaf's own ``.sharding``.

  Returns:
    Bytes, an int.

  Raises:
    TypeError: a leaf without a sharding (its path named).
  """
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  if shardings is None:
    pairs = [(path, leaf, getattr(leaf, "sharding", None)) for path, leaf in leaves]
  else:
    treedef: Any = jax.tree.structure(tree)
    flat_shardings = treedef.flatten_up_to(shardings)
    pairs = [
      (path, leaf, s) for (path, leaf), s in zip(leaves, flat_shardings, strict=True)
    ]
  per_device: dict[Any, int] = {}
  for path, leaf, s in pairs:
    if not isinstance(s, jax.sharding.Sharding):
      raise TypeError(
        f"tree leaf {_leaf_path(path)} has no sharding (got {type(leaf).__name__}); "
        "pass jax.Arrays, ShapeDtypeStructs with sharding=..., or shardings=..."
      )
    itemsize = jnp.dtype(leaf.dtype).itemsize
    for device, index in s.devices_indices_map(tuple(leaf.shape)).items():
      extent = [
        len(range(*i.indices(n))) for i, n in zip(index, leaf.shape, strict=True)
      ]
      per_device[device] = per_device.get(device, 0) + math.prod(extent) * itemsize
  return max(per_device.values(), default=0)
