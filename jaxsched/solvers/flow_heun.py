"""Flow-matching Heun: Heun's second-order method on the rectified-flow ODE ``dx/ds = v``
(Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
Algorithm 2, with the flow velocity as the derivative), as diffusers'
``FlowMatchHeunDiscreteScheduler`` takes it: two model calls per step.

A step from ``s`` to ``s'`` is a predictor call (Euler, ``x_e = x + (s' - s_hat) d``) then a
corrector call at ``x_e``, which restarts from the predictor's start with the mean slope:
``x' = x + (s' - s_hat) (d + d_e) / 2``. The last step, to 0, is the predictor alone. Optional
churn (Algorithm 2's ``gamma``) raises the start to ``s_hat = s (1 + gamma)`` with fresh noise.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxsched.grids.levels import Grid, Level
from jaxsched.solvers.base import Limits
from jaxsched.solvers.flow_euler import velocity_to_data
from jaxsched.solvers.multistep import History
from jaxsched.state import Thresholds

#: The largest churn per step (Karras et al. 2022, Algorithm 2: ``gamma <= sqrt(2) - 1``).
MAX_GAMMA = math.sqrt(2.0) - 1.0


class FlowHeunTables(NamedTuple):
    """Per-call tables, each ``(2N - 1,)``.

    Attributes:
        start: the level of the call's row (``add_noise`` reads it).
        corrector: 1.0 on corrector calls, 0.0 on predictor calls.
        sigma: the step's start ``s`` (the predictor's, on a corrector call).
        sigma_next: the step's end ``s'``.
        churn_scale: ``1 / (2N - 1)``: ``gamma = min(s_churn / (2N - 1), sqrt(2) - 1)``.
    """

    start: Level
    corrector: jax.Array
    sigma: jax.Array
    sigma_next: jax.Array
    churn_scale: jax.Array


@dataclasses.dataclass(frozen=True)
class FlowHeunSolver:
    """Heun on the flow ODE; the history is the predictor's slope and start sample."""

    order = 2
    history = 1

    def tables(self, grid: Grid, begin_index: int) -> FlowHeunTables:
        calls = grid.timesteps.shape[0]
        sigmas = jnp.concatenate([grid.start.sigma, grid.end.sigma[-1:]])
        corrector = (jnp.arange(calls) % 2).astype(sigmas.dtype)
        first = jnp.arange(calls) - (jnp.arange(calls) % 2)  # the predictor row of the step
        return FlowHeunTables(
            start=grid.start,
            corrector=corrector,
            sigma=sigmas[first],
            sigma_next=sigmas[first + 1],
            churn_scale=jnp.full((calls,), 1.0 / calls, sigmas.dtype),
        )

    def initial_history(self, shape: tuple[int, ...], dtype) -> History:
        return History(outputs=(jnp.zeros(shape, dtype),), samples=(jnp.zeros(shape, dtype),))

    def thresholds(self, dtype) -> Thresholds:
        return Limits().thresholds(dtype)

    def stochastic(self, params: dict[str, Any]) -> bool:
        """Churn draws noise; a traced ``s_churn`` may, so it needs a key or noise too."""
        churn = params.get("s_churn", 0.0)
        return isinstance(churn, jax.core.Tracer) or churn > 0

    def update(self, row, x, model_output, history, noise, thresholds, params):
        sigma, sigma_next = row.sigma, row.sigma_next
        churned = (params["s_tmin"] <= sigma) & (sigma <= params["s_tmax"])
        gamma = jnp.where(churned, jnp.minimum(params["s_churn"] * row.churn_scale, MAX_GAMMA), 0.0)
        sigma_hat = sigma * (gamma + 1.0)
        step = sigma_next - sigma_hat
        is_corrector = row.corrector > 0
        if noise is not None:  # a corrector's draw moves nothing (diffusers restarts from x)
            lift = params["s_noise"] * jnp.sqrt(jnp.maximum(sigma_hat**2 - sigma**2, 0.0))
            x = jnp.where(is_corrector | (gamma <= 0), x, x + lift * noise)
        # Predictor: d = (x - x0) / s_hat with x0 = x - s v; Euler from s_hat to s'.
        slope = (x - velocity_to_data(x, model_output, sigma)) / sigma_hat
        (previous_slope,), (previous_x,) = history.outputs, history.samples
        # Corrector: the slope at the Euler point (v, through x0 as diffusers rounds it),
        # averaged with the predictor's.
        at_end = jnp.where(is_corrector, sigma_next, 1.0)  # a predictor's s' may be 0
        end_slope = (x - velocity_to_data(x, model_output, at_end)) / at_end
        mean_slope = 0.5 * (previous_slope + end_slope)
        x_next = jnp.where(is_corrector, previous_x + mean_slope * step, x + slope * step)
        x0 = velocity_to_data(x, model_output, jnp.where(is_corrector, sigma_next, sigma))
        history = History(outputs=(slope,), samples=(x,))
        return x_next, x0, history
