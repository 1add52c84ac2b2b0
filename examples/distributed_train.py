"""Data-parallel RMSprop on one or many processes, with ZeRO-1 state sharding.

A small MLP (16 -> 32 -> 3, tanh) fits a synthetic regression with
``optax_rms.rmsprop(3e-3, centered=True, momentum=0.9)``: three state buffers
per parameter (nu, mu, momentum). The global batch (32 rows) is sharded over
every device of every process along the mesh axis ``data``; the parameters are
replicated over ``data`` (and split over ``model`` on a 2-D mesh); the
optimizer state is split over ``data`` as well (ZeRO-1,
``optax_rms.sharding.zero1_state_shardings``; ``--no-zero1`` keeps it like the
params). Process 0 prints the losses and can write the final parameters
(``--output``); all processes together can write an orbax checkpoint
(``--checkpoint-dir``) that any other layout can resume from (``--resume``).
``--offload-state`` keeps the optimizer state in pinned host memory between
steps (``optax_rms.host_offload``; the same numbers, see docs/distributed.md).

How to launch it:

* One process, all local devices (a GPU node, a TPU VM, or your laptop)::

    python examples/distributed_train.py --steps 100
    python examples/distributed_train.py --cpu-devices 8 --mesh 2x4  # CPU

* N processes by hand (here 2 on one machine, each simulating 4 CPU
  devices; the CPU collectives run over gloo). Every process gets the same
  coordinator address (process 0's host and a free port) and its own id::

    python examples/distributed_train.py --cpu-devices 4 \\
      --coordinator-address 127.0.0.1:12345 --num-processes 2 --process-id 0 &
    python examples/distributed_train.py --cpu-devices 4 \\
      --coordinator-address 127.0.0.1:12345 --num-processes 2 --process-id 1

  The same three values can come from the environment: ``JAX_COORDINATOR_ADDRESS``
  (read by JAX itself), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (read
  here).

* A GPU cluster under SLURM: ``--cluster`` calls
  ``jax.distributed.initialize()`` without arguments, and JAX reads the
  coordinator (the first node of ``SLURM_STEP_NODELIST``, a port derived from
  the job id, or ``JAX_COORDINATOR_PORT``), the number of processes
  (``SLURM_NTASKS``) and this process's id (``SLURM_PROCID``) from the
  environment (Open MPI's ``OMPI_*`` under ``mpirun`` likewise). SLURM
  detection assumes one process per GPU, every task seeing all the node's
  GPUs, and gives task ``SLURM_LOCALID`` that GPU; so ask for GPUs per node,
  not ``--gpus-per-task``::

    srun --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 \\
      python examples/distributed_train.py --cluster

  (One process per node driving all 8 GPUs instead: ``--ntasks-per-node=1``
  and ``JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7``, which JAX reads too.)

* A TPU pod slice: the same script on every host, JAX finds the other hosts
  from the TPU metadata::

    gcloud compute tpus tpu-vm ssh NAME --worker=all \\
      --command="python examples/distributed_train.py --cluster"

Each process makes the full synthetic batch of a step from its seed and hands
JAX only the rows of its own devices
(``jax.make_array_from_process_local_data``), as a real per-host data loader
would. Every process must run the same program: the same steps, the same
jitted functions, in the same order.

See docs/distributed.md for the memory arithmetic and more.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import optax_rms
from optax_rms import sharding

FEATURES, HIDDEN, OUTPUTS = 16, 32, 3
GLOBAL_BATCH = 32  # divisible by 8 devices (and by the data axis of any mesh here)
LEARNING_RATE = 3e-3
PARAM_SEED, DATA_SEED = 0, 1


def make_optimizer(offload: bool = False) -> optax.GradientTransformation:
  """The optimizer; with ``offload`` its state lives in pinned host memory."""
  tx = optax_rms.rmsprop(LEARNING_RATE, centered=True, momentum=0.9)
  return optax_rms.host_offload(tx) if offload else tx


def make_mesh(shape: Sequence[int] | None = None, devices: Any = None) -> Mesh:
  """A ("data",) or ("data", "model") mesh with Auto axes over ``devices``.

  Default: every device of every process on the data axis.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = tuple(shape or (len(devices),))
  names = ("data", "model")[: len(shape)]
  return jax.make_mesh(
    shape, names, axis_types=(AxisType.Auto,) * len(shape), devices=devices
  )


def param_shardings(mesh: Mesh) -> dict[str, NamedSharding]:
  """Replicated over "data"; Megatron-style split over "model" if there is one."""
  specs = {"w1": P(), "b1": P(), "w2": P(), "b2": P()}
  if "model" in mesh.axis_names:
    specs = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model"), "b2": P()}
  return {name: NamedSharding(mesh, spec) for name, spec in specs.items()}


def abstract_params() -> dict[str, jax.ShapeDtypeStruct]:
  shapes = {
    "w1": (FEATURES, HIDDEN),
    "b1": (HIDDEN,),
    "w2": (HIDDEN, OUTPUTS),
    "b2": (OUTPUTS,),
  }
  return {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}


def initial_params() -> dict[str, np.ndarray]:
  """The same numbers on every process (host NumPy, from a fixed seed)."""
  rng = np.random.default_rng(PARAM_SEED)
  return {
    k: (rng.normal(size=a.shape) / np.sqrt(a.shape[0])).astype(np.float32)
    for k, a in abstract_params().items()
  }


def global_batch(step: int) -> tuple[np.ndarray, np.ndarray]:
  """Step ``step``'s full batch: a fixed random teacher network plus noise."""
  teacher = np.random.default_rng(DATA_SEED).normal(size=(FEATURES, OUTPUTS))
  teacher /= np.sqrt(FEATURES)
  rng = np.random.default_rng([DATA_SEED, step])
  x = rng.normal(size=(GLOBAL_BATCH, FEATURES)).astype(np.float32)
  y = np.sin(x @ teacher) + 0.1 * rng.normal(size=(GLOBAL_BATCH, OUTPUTS))
  return x, y.astype(np.float32)


def _local_rows(batch_sharding: NamedSharding, shape: tuple[int, ...]) -> slice:
  """The rows of the global batch that this process's devices hold."""
  indices = batch_sharding.addressable_devices_indices_map(shape).values()
  rows = sorted({r for i in indices if i for r in range(*i[0].indices(shape[0]))})
  if rows != list(range(rows[0], rows[-1] + 1)):
    raise ValueError(f"this process's batch rows are not contiguous: {rows}")
  return slice(rows[0], rows[-1] + 1)


def device_batch(mesh: Mesh, step: int) -> tuple[jax.Array, jax.Array]:
  """Step ``step``'s batch as global arrays sharded over "data"."""
  batch_sharding = NamedSharding(mesh, P("data"))
  out = []
  for host in global_batch(step):
    rows = _local_rows(batch_sharding, host.shape)
    # A real loader would read only these rows; they are all this process has.
    out.append(
      jax.make_array_from_process_local_data(batch_sharding, host[rows], host.shape)
    )
  return out[0], out[1]


def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean(jnp.square(hidden @ params["w2"] + params["b2"] - y))


def state_shardings(
  tx: optax.GradientTransformation, mesh: Mesh, zero1: bool, offload: bool = False
) -> Any:
  params = abstract_params()
  kind = "pinned_host" if offload else None  # the state's memory
  kw: dict[str, Any] = dict(shardings=param_shardings(mesh), memory_kind=kind)
  if zero1:
    return sharding.zero1_state_shardings(tx, params, "data", **kw)
  return sharding.state_shardings(tx, params, **kw)


def init(mesh: Mesh, zero1: bool = True, offload: bool = False) -> tuple[Any, Any]:
  """Parameters and optimizer state, placed on ``mesh``."""
  tx = make_optimizer(offload)
  host = initial_params()
  psh = param_shardings(mesh)
  params = {
    k: jax.make_array_from_callback(v.shape, psh[k], v.__getitem__)
    for k, v in host.items()
  }
  ssh = state_shardings(tx, mesh, zero1, offload)
  state = jax.jit(tx.init, out_shardings=ssh)(params)
  return params, state


def make_train_step(mesh: Mesh, zero1: bool = True, offload: bool = False) -> Any:
  """The jitted step; the shardings pin params, state and batch in place (and
  the state's memory: with ``offload``, pinned host memory)."""
  tx = make_optimizer(offload)
  psh = param_shardings(mesh)
  ssh = state_shardings(tx, mesh, zero1, offload)
  bsh = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())

  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  return jax.jit(
    step,
    in_shardings=(psh, ssh, bsh, bsh),
    out_shardings=(psh, ssh, replicated),
    donate_argnums=(0, 1),
  )


def _scalar(x: jax.Array) -> Any:
  """A replicated value on the host (fine when other processes hold it too)."""
  return np.asarray(x.addressable_data(0)).item()


def train(
  mesh: Mesh,
  steps: int,
  *,
  zero1: bool = True,
  offload: bool = False,
  start: tuple[Any, Any] | None = None,
) -> tuple[Any, Any, list[float]]:
  """``steps`` steps from ``start`` (default: fresh), as (params, state, losses).

  The batch of a step depends on the step number only (the state's ``count``),
  so a resumed run sees the data an uninterrupted one would.
  """
  params, state = start if start is not None else init(mesh, zero1, offload)
  step_fn = make_train_step(mesh, zero1, offload)
  first = _scalar(_rmsprop_state(state).count)
  losses = []
  for t in range(first, first + steps):
    x, y = device_batch(mesh, t)
    params, state, loss = step_fn(params, state, x, y)
    losses.append(float(_scalar(loss)))
  return params, state, losses


def _rmsprop_state(state: Any) -> optax_rms.RMSPropState:
  """The RMSprop state, inside host_offload's if offloaded."""
  return state.inner_state if isinstance(state, optax_rms.HostOffloadState) else state


def to_host(tree: Any) -> Any:
  """NumPy copies of global arrays (a collective: every process must call it)."""
  from jax.experimental import multihost_utils

  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def save_checkpoint(path: str | os.PathLike, params: Any, state: Any) -> None:
  """Every process writes its own shards (orbax); ``path`` must not exist yet."""
  import orbax.checkpoint as ocp

  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(pathlib.Path(path).resolve(), {"params": params, "opt_state": state})


def restore_checkpoint(
  path: str | os.PathLike, mesh: Mesh, zero1: bool = True
) -> tuple[Any, Any]:
  """Params and state from ``path``, resharded onto ``mesh`` (any layout)."""
  import orbax.checkpoint as ocp

  tx = make_optimizer()
  psh = param_shardings(mesh)
  params = abstract_params()
  state = jax.eval_shape(tx.init, params)
  with_sharding = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
  target = {
    "params": jax.tree.map(with_sharding, params, psh),
    "opt_state": jax.tree.map(with_sharding, state, state_shardings(tx, mesh, zero1)),
  }
  with ocp.StandardCheckpointer() as ckpt:
    restored = ckpt.restore(pathlib.Path(path).resolve(), target)
  # Given a target, orbax hands back its types: an RMSPropState, not a dict.
  return restored["params"], restored["opt_state"]


def _initialize_distributed(args: argparse.Namespace) -> bool:
  """Starts jax.distributed if asked to; whether it did."""
  explicit = (args.coordinator_address, args.num_processes, args.process_id)
  if args.cluster:
    # SLURM, Open MPI, TPU pods, ...: JAX reads everything from the environment.
    jax.distributed.initialize(initialization_timeout=args.init_timeout)
    return True
  if all(v is None for v in explicit) or args.num_processes == 1:
    return False
  jax.distributed.initialize(
    coordinator_address=args.coordinator_address,
    num_processes=args.num_processes,
    process_id=args.process_id,
    initialization_timeout=args.init_timeout,
  )
  return True


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  return None if value in (None, "") else int(value)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument(
    "--mesh",
    default=None,
    help="DATA or DATAxMODEL, e.g. 8 or 2x4 (default: all devices on data)",
  )
  parser.add_argument(
    "--no-zero1",
    dest="zero1",
    action="store_false",
    help="keep the optimizer state like the params (no ZeRO-1 split)",
  )
  parser.add_argument(
    "--offload-state",
    action="store_true",
    help="keep the optimizer state in pinned host memory (optax_rms.host_offload)",
  )
  parser.add_argument(
    "--cpu-devices",
    type=int,
    default=None,
    help="run on N simulated CPU devices per process (gloo collectives)",
  )
  parser.add_argument(
    "--coordinator-address",
    default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
    help="host:port of process 0 (env JAX_COORDINATOR_ADDRESS)",
  )
  parser.add_argument(
    "--num-processes",
    type=int,
    default=_env_int("JAX_NUM_PROCESSES"),
    help="env JAX_NUM_PROCESSES",
  )
  parser.add_argument(
    "--process-id",
    type=int,
    default=_env_int("JAX_PROCESS_ID"),
    help="env JAX_PROCESS_ID",
  )
  parser.add_argument(
    "--cluster",
    action="store_true",
    help="auto-detect the cluster (SLURM, Open MPI, TPU pod) for jax.distributed",
  )
  parser.add_argument(
    "--init-timeout",
    type=int,
    default=300,
    help="seconds to wait for all processes to join",
  )
  parser.add_argument("--output", default=None, help="write final params (.npz)")
  parser.add_argument("--checkpoint-dir", default=None, help="orbax checkpoint out")
  parser.add_argument("--resume", default=None, help="orbax checkpoint to resume")
  args = parser.parse_args(argv)
  if args.offload_state and (args.checkpoint_dir or args.resume):
    # The checkpoint helpers here place a device-resident RMSPropState.
    parser.error("--offload-state does not combine with --checkpoint-dir/--resume")
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  if args.cpu_devices is not None:
    # Before any JAX array exists: the CPU backend reads these once.
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  distributed = _initialize_distributed(args)
  try:
    shape = [int(n) for n in args.mesh.split("x")] if args.mesh else None
    mesh = make_mesh(shape)
    start = restore_checkpoint(args.resume, mesh, args.zero1) if args.resume else None
    params, state, losses = train(
      mesh, args.steps, zero1=args.zero1, offload=args.offload_state, start=start
    )
    host_params = to_host(params)
    if args.checkpoint_dir:
      save_checkpoint(args.checkpoint_dir, params, state)
    if jax.process_index() == 0:
      print(
        f"{jax.process_count()} process(es), {jax.device_count()} devices "
        f"({jax.local_device_count()} local), mesh {dict(mesh.shape)}, "
        f"state {sharding.bytes_per_device(state)} bytes per device"
      )
      last = _scalar(_rmsprop_state(state).count)
      for t, loss in enumerate(losses, last - len(losses)):
        print(f"step {t}: loss {loss:.6f}")
      if args.output:
        np.savez(
          args.output,
          losses=np.array(losses),
          process_count=jax.process_count(),
          device_count=jax.device_count(),
          local_device_count=jax.local_device_count(),
          steps=last,
          offload_state=args.offload_state,
          state_memory_kinds=sorted(
            {x.sharding.memory_kind for x in jax.tree.leaves(state)}
          ),
          **{f"params.{k}": v for k, v in host_params.items()},
        )
    sys.stdout.flush()
  finally:
    if distributed:
      jax.distributed.shutdown()


if __name__ == "__main__":
  main()
