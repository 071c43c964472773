"""What every training noise process shares: the dtype policy of tables and samples, and the
forward noising ``x = alpha x0 + sigma noise`` with per-sample scales."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched._checks import OptionTypeError, check_floating_dtype


def default_float_dtype() -> jnp.dtype:
    """float64 when ``jax_enable_x64`` is on, else float32: the dtype of every table."""
    return jnp.result_type(float)


def compute_dtype(sample_dtype, table_dtype) -> jnp.dtype:
    """Samples are updated in at least the tables' precision (float32, or float64 with x64):
    the wider of the two floating dtypes, chosen explicitly so that it also holds under
    ``jax_numpy_dtype_promotion="strict"``."""
    sample, table = jnp.dtype(sample_dtype), jnp.dtype(table_dtype)
    return sample if sample.itemsize > table.itemsize else table


def per_sample(values: jax.Array, ndim: int) -> jax.Array:
    """Reshape ``(B,)`` (or scalar) per-sample values to broadcast against a rank-``ndim`` array."""
    values = jnp.ravel(values)
    return values.reshape(values.shape + (1,) * max(ndim - 1, 0)) if values.size > 1 else values[0]


def check_timesteps_type(timesteps) -> None:
    """``timesteps`` of ``add_noise`` / ``get_velocity`` are real numbers or arrays."""
    if timesteps is None or isinstance(timesteps, (str, bytes)):
        raise OptionTypeError(f"timesteps must be a number or an array, got {timesteps!r}")
    dtype = jnp.result_type(timesteps)
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise OptionTypeError(f"timesteps must be integers or floats, got dtype {dtype}")


def check_noising_inputs(original_samples, noise, timesteps) -> None:
    """Floating-point samples, noise of exactly their shape, and a scalar or one timestep per
    leading-axis item ``(B,)``; raises naming the argument."""
    check_floating_dtype("original_samples", jnp.result_type(original_samples))
    if jnp.shape(noise) != jnp.shape(original_samples):
        raise ValueError(
            f"noise has shape {jnp.shape(noise)} but original_samples has shape "
            f"{jnp.shape(original_samples)}; they must be equal"
        )
    size = int(np.prod(jnp.shape(timesteps)))
    batch = jnp.shape(original_samples)[:1]
    if size != 1 and (jnp.ndim(timesteps) != 1 or jnp.shape(timesteps) != batch):
        raise ValueError(
            f"timesteps must be a scalar or one per batch item, shape {batch}, got shape "
            f"{jnp.shape(timesteps)}"
        )


def noised(original_samples, noise, alpha, sigma, table_dtype) -> jax.Array:
    """``alpha x0 + sigma noise`` with scalar or per-sample ``(B,)`` scales, computed in at least
    the tables' precision and returned in the samples' dtype."""
    x0 = jnp.asarray(original_samples)
    dtype = compute_dtype(x0.dtype, table_dtype)
    alpha, sigma = (per_sample(v, x0.ndim).astype(dtype) for v in (alpha, sigma))
    out = alpha * x0.astype(dtype) + sigma * jnp.asarray(noise).astype(dtype)
    return out.astype(x0.dtype)
