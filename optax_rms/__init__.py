"""optax_rms: RMSprop for JAX, as an Optax gradient transformation."""

from optax_rms import compat as compat
from optax_rms import sharding as sharding
from optax_rms._ema import EmaParamsState as EmaParamsState
from optax_rms._ema import ema_params as ema_params
from optax_rms._ema import get_ema_params as get_ema_params
from optax_rms._migrate import from_optax_rmsprop_state as from_optax_rmsprop_state
from optax_rms._offload import HostOffloadState as HostOffloadState
from optax_rms._offload import host_offload as host_offload
from optax_rms._pack import PackedLeaves as PackedLeaves
from optax_rms._pack import pack_small as pack_small
from optax_rms._rmsprop import RMSPropState as RMSPropState
from optax_rms._rmsprop import rmsprop as rmsprop
from optax_rms._rmsprop import scale_by_rms as scale_by_rms

__version__ = "0.1.0"

__all__ = [
  "EmaParamsState",
  "HostOffloadState",
  "PackedLeaves",
  "RMSPropState",
  "compat",
  "ema_params",
  "from_optax_rmsprop_state",
  "get_ema_params",
  "host_offload",
  "pack_small",
  "rmsprop",
  "scale_by_rms",
  "sharding",
]
