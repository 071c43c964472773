"""Square roots and logarithms whose derivatives stay finite at 0.

Grids that end at the data have levels with ``sigma = 0`` (``sqrt(0)``, ``log(0) = -inf``). Their
values are right in IEEE arithmetic, but the derivatives there are infinite and meet a zero
cotangent as ``0 * inf = NaN``, which would poison ``jax.grad`` through the whole loop. These
return the same values with derivative 0 at the boundary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sqrt_or_zero(value: jax.Array) -> jax.Array:
    """``sqrt(value)``: 0 with derivative 0 at ``value = 0``, NaN below 0 (never hidden)."""
    positive = value > 0
    root = jnp.sqrt(jnp.where(positive, value, 1.0))
    return jnp.where(positive, root, jnp.where(value == 0, 0.0, jnp.nan))


def sqrt_of_variance(value: jax.Array) -> jax.Array:
    """``sqrt(max(value, 0))`` for a variance that is >= 0 in exact arithmetic: a rounding
    negative (e.g. ``1 - a_to - std^2`` of stochastic DDIM at eta = 1 from a zero-SNR level) is
    0, with derivative 0 there."""
    return sqrt_or_zero(jnp.maximum(value, 0.0))


def log_or_minus_inf(value: jax.Array) -> jax.Array:
    """``log(value)``, ``-inf`` at ``value = 0``, with derivative 0 there rather than NaN."""
    positive = value > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, value, 1.0)), -jnp.inf)
