"""Flow-matching Euler: the first-order step of the rectified-flow ODE ``dx/ds = v`` (Lipman
et al. 2023, "Flow Matching for Generative Modeling"; Liu et al. 2023, "Flow Straight and
Fast"), as diffusers' ``FlowMatchEulerDiscreteScheduler`` takes it.

With ``x = (1 - s) x0 + s eps`` the model predicts the velocity ``v = eps - x0``, and one step
from ``s`` to ``s'`` is

    x' = x + (s' - s) v                          (deterministic), or
    x' = (1 - s') x0 + s' z,  x0 = x - s v       (``stochastic_sampling``: fresh noise ``z``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax

from jaxsched.grids.levels import Grid, Level
from jaxsched.solvers.base import Limits
from jaxsched.state import Thresholds


class FlowEulerTables(NamedTuple):
    """Per-step tables, each ``(N,)``.

    Attributes:
        start: the level each step starts from (``alpha = 1 - s``, ``sigma = s``).
        end: the level it ends at.
        step: ``s' - s`` (negative toward data), rounded as diffusers rounds it.
    """

    start: Level
    end: Level
    step: jax.Array


def velocity_to_data(x: jax.Array, velocity: jax.Array, sigma) -> jax.Array:
    """``x0 = x - s v`` on the rectified-flow path ``x = (1 - s) x0 + s eps``, ``v = eps - x0``."""
    return x - sigma * velocity


@dataclasses.dataclass(frozen=True)
class FlowEulerSolver:
    """Euler on the flow ODE, or diffusers' stochastic variant that re-noises the x0
    prediction to the next level (``stochastic``)."""

    stochastic_sampling: bool = False

    order = 1
    history = 0

    def tables(self, grid: Grid, begin_index: int) -> FlowEulerTables:
        return FlowEulerTables(grid.start, grid.end, grid.end.sigma - grid.start.sigma)

    def initial_history(self, shape: tuple[int, ...], dtype) -> tuple:
        return ()

    def thresholds(self, dtype) -> Thresholds:
        return Limits().thresholds(dtype)

    def stochastic(self, params: dict[str, Any]) -> bool:
        return self.stochastic_sampling

    def update(self, row, x, model_output, history, noise, thresholds, params):
        x0 = velocity_to_data(x, model_output, row.start.sigma)
        if noise is None:
            return x + row.step * model_output, x0, history
        return row.end.alpha * x0 + row.end.sigma * noise, x0, history
