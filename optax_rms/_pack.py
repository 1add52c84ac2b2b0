"""Pack the state of small parameters into a few flat vectors.

A jitted step compiles to a few kernels per parameter leaf (XLA does not fuse
across leaves), so on a model of many small leaves the step is bound by kernel
count, not bytes, and its compile time by the number of fusions.
`optax.flatten` packs every leaf into one vector: that fixes the kernel count,
but concatenating and slicing the big leaves each step costs more than it
saves, and XLA compiles one concatenation of a thousand operands slowly.
`pack_small` packs only the small leaves, in groups of a bounded number of
leaves. The numbers are those of the inner transformation, leaf for leaf.
"""

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_rms import _validate
from optax_rms._types import GradientTransformation, GradientTransformationExtraArgs


@jax.tree_util.register_pytree_with_keys_class
class PackedLeaves:
  """The tree the inner transformation sees under `pack_small`.

  A pytree node with two children and one piece of static metadata.

  Attributes:
    large: the leaves of more than ``max_size`` elements, as they are, in tree
      order.
    small: the other leaves, raveled and concatenated into flat vectors: one
      per group of at most ``max_leaves`` leaves of one dtype.
    segments: static: for each leaf of ``(*large, *small)``, the parameters
      it holds as ``(index in the user's tree, shape)`` pairs, in order (one
      for a large leaf). Blockwise 8-bit state cuts its blocks within each
      parameter from it, and ``pack_small`` checks a state's shapes with it.
      ``None`` for a node built by hand.
  """

  __slots__ = ("large", "small", "segments")

  def __init__(
    self,
    large: tuple[Any, ...],
    small: tuple[Any, ...],
    segments: tuple[tuple[tuple[int, tuple[int, ...]], ...], ...] | None = None,
  ):
    self.large = large
    self.small = small
    self.segments = segments

  def tree_flatten_with_keys(self) -> tuple[Any, Any]:
    keys = jax.tree_util.GetAttrKey
    return ((keys("large"), self.large), (keys("small"), self.small)), self.segments

  @classmethod
  def tree_unflatten(cls, segments: Any, children: Any) -> "PackedLeaves":
    large, small = children
    return cls(large, small, segments=segments)

  def __repr__(self) -> str:
    return f"PackedLeaves(large={self.large!r}, small={self.small!r})"

  # Compared and hashed as the tuple of its fields, as a NamedTuple would be
  # (e.g. two trees of shardings).
  def _fields(self) -> tuple[Any, Any, Any]:
    return (self.large, self.small, self.segments)

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, PackedLeaves):
      return NotImplemented
    return self._fields() == other._fields()

  def __hash__(self) -> int:
    return hash(self._fields())


class _Layout(NamedTuple):
  """Where each leaf of the user's tree went (static: shapes and dtypes)."""

  treedef: Any
  large: tuple[int, ...]  # leaf indices kept as they are
  groups: tuple[tuple[int, ...], ...]  # leaf indices packed, per flat vector
  shapes: tuple[tuple[int, ...], ...]  # every leaf's shape

  def segments(self) -> tuple[tuple[tuple[int, tuple[int, ...]], ...], ...]:
    """`PackedLeaves.segments`: the parameters in each packed leaf."""
    return tuple(((i, self.shapes[i]),) for i in self.large) + tuple(
      tuple((i, self.shapes[i]) for i in group) for group in self.groups
    )


def _layout(leaves: list[Any], treedef: Any, max_size: int, max_leaves: int) -> _Layout:
  large: list[int] = []
  groups: list[list[int]] = []
  open_group: dict[Any, list[int]] = {}  # dtype -> the group being filled
  for i, leaf in enumerate(leaves):
    if math.prod(leaf.shape) > max_size:
      large.append(i)
      continue
    group = open_group.get(leaf.dtype)
    if group is None or len(group) == max_leaves:
      group = open_group[leaf.dtype] = []
      groups.append(group)
    group.append(i)
  return _Layout(
    treedef,
    tuple(large),
    tuple(tuple(g) for g in groups),
    tuple(tuple(leaf.shape) for leaf in leaves),
  )


# Jitted so that an eager update packs and unpacks in one dispatch each, not
# one per leaf (the layout is static: shapes and dtypes); inlined under jit.
@functools.partial(jax.jit, static_argnums=1)
def _pack(leaves: list[Any], layout: _Layout) -> PackedLeaves:
  return PackedLeaves(
    large=tuple(leaves[i] for i in layout.large),
    small=tuple(
      jnp.concatenate([jnp.ravel(leaves[i]) for i in group]) for group in layout.groups
    ),
    segments=layout.segments(),
  )


@functools.partial(jax.jit, static_argnums=1)
def _unpack(packed: PackedLeaves, layout: _Layout) -> Any:
  leaves: list[Any] = [None] * len(layout.shapes)
  for i, leaf in zip(layout.large, packed.large, strict=True):
    leaves[i] = leaf
  for group, flat in zip(layout.groups, packed.small, strict=True):
    offset = 0
    for i in group:
      size = math.prod(layout.shapes[i])
      leaves[i] = flat[offset : offset + size].reshape(layout.shapes[i])
      offset += size
  return jax.tree.unflatten(layout.treedef, leaves)


def _check_state_layout(state: Any, updates: Any, layout: _Layout) -> None:
  """Raises ValueError, naming the leaf, where the state was packed for other
  shapes than the gradients' (the flat vectors alone could still match)."""
  is_packed = lambda x: isinstance(x, PackedLeaves)
  want = layout.segments()
  for node in jax.tree.leaves(state, is_leaf=is_packed):
    if not is_packed(node) or node.segments is None or node.segments == want:
      continue
    had = {i: shape for leaf in node.segments for i, shape in leaf}
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree.leaves_with_path(updates)]
    for i, (path, shape) in enumerate(zip(paths, layout.shapes, strict=True)):
      if had.get(i) != shape:
        raise ValueError(
          f"pack_small: the state was made for parameter {path or '<root>'} of "
          f"shape {had.get(i)}, but its gradient has shape {shape} (was the "
          "state initialised from other parameters?)."
        )
    raise ValueError(
      f"pack_small: the state was made for {len(had)} parameters packed "
      f"otherwise (max_size / max_leaves changed?), the gradients have "
      f"{len(paths)}; re-create the state with this optimizer's init."
    )


def _brief(treedef: Any) -> str:
  text = str(treedef)
  return text if len(text) <= 200 else text[:197] + "..."


def _check_state_structure(state: Any, expected: Any) -> None:
  """TypeError where ``state``'s tree is not ``expected``, the tree of the
  state ``init`` returns for these parameters (a state of another
  transformation, or of ``inner`` on the unpacked parameters)."""
  got = jax.tree.structure(state)
  if got == expected:
    return
  hint = (
    " (a checkpoint restored without a target? Restore with "
    "jax.eval_shape(tx.init, params) as the target.)"
    if isinstance(state, dict)
    else " (the state of the inner transformation without pack_small, or of "
    "another transformation?)"
  )
  raise TypeError(
    f"optax_rms.pack_small: expected the state its init returns for these "
    f"parameters (the inner state of the packed tree), got "
    f"{type(state).__name__} with the tree {_brief(got)}; expected the tree "
    f"{_brief(expected)}{hint}"
  )


def pack_small(
  inner: GradientTransformation,
  *,
  max_size: int = 65_536,
  max_leaves: int = 32,
) -> GradientTransformationExtraArgs:
  """Runs ``inner`` with the small leaves packed into a few flat vectors.

  Leaves of at most ``max_size`` elements (biases, norm scales, small
  kernels) are raveled and concatenated, by dtype, into flat vectors of at
  most ``max_leaves`` leaves each; ``inner`` sees a `PackedLeaves` tree, keeps
  its state for it, and its updates are sliced back into the tree's shapes.
  Larger leaves pass through as they are. The returned updates, and the
  parameters after ``optax.apply_updates``, are those of ``inner`` on the
  unpacked tree, for elementwise transformations such as
  ``optax_rms.rmsprop`` (as for ``optax.flatten``).

  Worth it for models of many small leaves: a jitted step compiles to a few
  kernels per leaf, so there the step costs per-kernel overhead rather than
  bytes, and its compile time grows with the number of leaves
  (``docs/performance.md`` has the figures). ``max_leaves`` bounds each
  concatenation: XLA compiles one concatenation of a thousand operands more
  slowly than the leafwise step it replaces. The defaults were chosen on a
  CPU, where packing a big leaf costs a copy of its gradient and update per
  step. On a GPU, where a convnet's step waits on the host more than on
  memory, packing every leaf (``max_size`` above the largest) was faster
  still on ResNet-50.

  What changes, beside speed: the state is no longer shaped like the
  parameters (its buffers are `PackedLeaves`), so checkpoints of the two
  layouts do not mix. On several devices, keep ``max_size`` below the size
  of every sharded leaf, so that only replicated leaves are packed: the big
  leaves pass through and their state takes their sharding (under ``jit``,
  and from ``optax_rms.sharding.state_shardings`` /
  ``zero1_state_shardings``, which place the packed vectors replicated, or
  split over the data axis for ZeRO-1). Per-leaf options of ``inner``
  (``weight_decay_mask``) would see the packed tree and are refused: give
  them through ``optax.masked`` / ``optax.multi_transform`` outside
  ``pack_small`` instead.

  Args:
    inner: the transformation to run on the packed tree, elementwise.
    max_size: leaves of at most this many elements are packed (>= 0).
    max_leaves: at most this many leaves per flat vector (>= 1).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; extra arguments are passed
    to ``inner``.

  Raises:
    TypeError: ``inner`` is not a transformation, ``max_size`` or
      ``max_leaves`` not an int; at ``update``, a state whose tree is not the
      one ``init`` makes for these parameters (e.g. ``inner``'s own state of
      the unpacked parameters).
    ValueError: ``max_size`` < 0 or ``max_leaves`` < 1; at ``update``,
      parameters and gradients of different trees, or a state packed for
      other shapes.

  Example:
    >>> import jax.numpy as jnp, optax, optax_rms
    >>> params = {"w": jnp.ones((512, 512)), "b": jnp.zeros(512)}
    >>> tx = optax_rms.pack_small(optax_rms.rmsprop(1e-3, momentum=0.9))
    >>> state = tx.init(params)
    >>> [x.shape for x in state.nu.small]  # "b", packed; "w" is left as is
    [(512,)]
  """
  name = "optax_rms.pack_small"
  _validate.check_inner(name, inner)
  # No int32 bound: both are compared with leaf sizes in Python only.
  check = functools.partial(_validate.check_int_in, high=None, what=name)
  max_size = check("max_size", max_size, low=0)
  max_leaves = check("max_leaves", max_leaves, low=1)
  inner = optax.with_extra_args_support(inner)

  def pack(tree: Any) -> tuple[PackedLeaves, _Layout]:
    leaves, treedef = jax.tree.flatten(tree)
    leaves = [jnp.asarray(leaf) for leaf in leaves]
    layout = _layout(leaves, treedef, max_size, max_leaves)
    return _pack(leaves, layout), layout

  def init_fn(params: optax.Params) -> optax.OptState:
    return inner.init(pack(params)[0])

  # The tree of init's state for each layout (shapes and dtypes): an update
  # checks its state against it. Traced once per layout.
  structures: dict[_Layout, Any] = {}

  def state_structure(packed: PackedLeaves, layout: _Layout) -> Any:
    if layout not in structures:
      structures[layout] = jax.tree.structure(jax.eval_shape(inner.init, packed))
    return structures[layout]

  def update_fn(
    updates: optax.Updates,
    state: optax.OptState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.OptState]:
    packed, layout = pack(updates)
    if params is not None:
      params_packed, params_layout = pack(params)
      if params_layout != layout:
        raise ValueError(
          f"{name}: the parameters and the gradients differ in tree, shape "
          f"or dtype.\n  gradients:  {layout.treedef}\n  parameters: "
          f"{params_layout.treedef}"
        )
    else:
      params_packed = None
    _check_state_layout(state, updates, layout)
    _check_state_structure(state, state_structure(packed, layout))
    new, state = inner.update(packed, state, params_packed, **extra_args)
    return _unpack(new, layout), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
