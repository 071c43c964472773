"""The typed step grid every family's tables are built from.

A noise level is written three ways: the scales of ``x = alpha x0 + sigma eps`` (what updates
and conversions use) and the grid sigma (what spacings, custom grids and timesteps use):
``sigma / alpha = sqrt((1 - a) / a)`` for variance-preserving levels, the flow sigma ``s`` for
flow levels (``alpha = 1 - s``, ``sigma = s``). A :class:`Grid` lists, for each of the ``N``
steps, the timestep the model is called with and the levels the step starts and ends at. Its
direction is in the levels alone: a run toward noise has rising sigmas, and every update
works either way.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsched.solvers.safe_math import sqrt_or_zero


class Level(NamedTuple):
    """Noise levels, arrays of one shape.

    Attributes:
        alpha: the signal scale of ``x = alpha x0 + sigma eps``.
        sigma: the noise scale.
        grid_sigma: ``sigma / alpha`` (variance-preserving) or the flow sigma ``s``.
    """

    alpha: jax.Array
    sigma: jax.Array
    grid_sigma: jax.Array


class Grid(NamedTuple):
    """The step grid of a run: ``N`` steps.

    Attributes:
        timesteps: ``(N,)`` the timestep the model is called with at each step (integers, or
            continuous floats for custom grids).
        start: the :class:`Level` each step starts from, each ``(N,)``.
        end: the :class:`Level` each step ends at, each ``(N,)``. In a chained grid (every
            multistep family) step ``i`` ends where step ``i + 1`` starts.
    """

    timesteps: jax.Array
    start: Level
    end: Level

    @property
    def sigmas(self) -> jax.Array:
        """``(N + 1,)`` grid sigmas of a chained grid: every start, then the last end."""
        return jnp.concatenate([self.start.grid_sigma, self.end.grid_sigma[-1:]])


def vp_levels(grid_sigmas: jax.Array) -> Level:
    """Variance-preserving levels of grid sigmas ``s = sqrt((1 - a) / a)``:
    ``alpha = 1 / sqrt(1 + s^2)``, ``sigma = s alpha`` (``s = inf`` is pure noise)."""
    alpha = 1.0 / jnp.sqrt(grid_sigmas**2 + 1.0)
    sigma = jnp.where(jnp.isinf(grid_sigmas), 1.0, grid_sigmas * alpha)
    return Level(alpha=alpha, sigma=sigma, grid_sigma=grid_sigmas)


def flow_levels(flow_sigmas: jax.Array) -> Level:
    """Flow-matching levels of flow sigmas ``s``: ``x = (1 - s) x0 + s eps``."""
    return Level(alpha=1.0 - flow_sigmas, sigma=flow_sigmas, grid_sigma=flow_sigmas)


def abar_levels(alphas_cumprod: jax.Array) -> Level:
    """Variance-preserving levels of ``a = alphas_cumprod``: ``sqrt(a)``, ``sqrt(1 - a)`` (with
    zero derivative where they are 0, so gradients through grid ends stay finite)."""
    alpha, sigma = sqrt_or_zero(alphas_cumprod), sqrt_or_zero(1.0 - alphas_cumprod)
    safe = jnp.where(alpha > 0, alpha, 1.0)
    return Level(alpha=alpha, sigma=sigma, grid_sigma=jnp.where(alpha > 0, sigma / safe, jnp.inf))


def chained(timesteps: jax.Array, levels: Level) -> Grid:
    """The grid of ``N`` steps over ``N + 1`` levels, each step ending where the next starts."""
    return Grid(
        timesteps=timesteps,
        start=jax.tree.map(lambda v: v[:-1], levels),
        end=jax.tree.map(lambda v: v[1:], levels),
    )
