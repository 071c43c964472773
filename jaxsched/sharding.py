"""Sampling a batch sharded over devices.

Every step is elementwise along the batch: the update is a fused multiply-add, dynamic
thresholding takes its quantile per sample, and the per-step tables are scalars. So a batch
split over a device mesh runs the same ``lax.scan`` on each device with no communication inside
the loop; ``jax.jit`` propagates the input's sharding to every step::

    mesh = jaxsched.sharding.batch_mesh()              # every local device on axis "batch"
    x_T = jaxsched.sharding.shard_batch(x_T, mesh)     # (B, ...) split along B
    state = jaxsched.sharding.replicate(sched.init(25, x_T.shape), mesh)
    x0 = jax.jit(lambda s, x: jaxsched.sample(sched, s, model_fn, x))(state, x_T)

The model's parameters are replicated the same way (or sharded as the model needs). Random
numbers drawn from a ``key`` inside the loop are generated where they are used
(``jax_threefry_partitionable``, JAX's default) and equal the unsharded draws.

On several hosts (TPU pods, multi-node GPU), call ``jax.distributed.initialize()`` on every
process first; ``batch_mesh()`` then spans ``jax.devices()``, all processes' devices, and each
process builds its slice of the global batch with
``jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), local_x)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxsched._checks import OptionTypeError, check_int

BATCH_AXIS = "batch"


def batch_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = BATCH_AXIS) -> Mesh:
    """A one-axis mesh over ``devices`` (default: ``jax.devices()``, every process's)."""
    if devices is not None and (
        isinstance(devices, (str, bytes)) or not all(isinstance(d, jax.Device) for d in devices)
    ):
        raise OptionTypeError(f"devices must be a sequence of jax.Device, got {devices!r:.60}")
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must name at least one device")
    return Mesh(np.asarray(devices), (axis_name,))


def batch_sharding(mesh: Mesh, ndim: int, axis_name: str = BATCH_AXIS) -> NamedSharding:
    """Split the leading (batch) axis of an ``ndim``-dimensional array over ``axis_name``."""
    check_mesh(mesh)
    check_int("ndim", ndim)
    if ndim < 1:
        raise ValueError("a batch sharding needs an array with a leading batch axis (ndim >= 1)")
    if axis_name not in mesh.shape:
        raise ValueError(f"the mesh has no axis {axis_name!r}; its axes are {list(mesh.shape)}")
    return NamedSharding(mesh, PartitionSpec(axis_name, *([None] * (ndim - 1))))


def shard_batch(x: jax.Array, mesh: Mesh, axis_name: str = BATCH_AXIS) -> jax.Array:
    """``x`` placed with its leading axis split over the mesh axis ``axis_name``.

    Raises ``ValueError`` when the batch does not divide evenly over the devices of that axis.
    """
    sharding = batch_sharding(mesh, np.ndim(x), axis_name)
    devices = mesh.shape[axis_name]
    if np.shape(x)[0] % devices:
        raise ValueError(
            f"the batch of {np.shape(x)[0]} does not split evenly over {devices} devices"
        )
    return jax.device_put(x, sharding)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array of ``tree`` (a ``SchedulerState``, model parameters) on every device."""
    check_mesh(mesh)
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def check_mesh(mesh: Any) -> None:
    """``mesh`` is a ``jax.sharding.Mesh``; raises ``TypeError`` otherwise."""
    if not isinstance(mesh, Mesh):
        raise OptionTypeError(f"mesh must be a jax.sharding.Mesh (batch_mesh()), got {mesh!r:.60}")
