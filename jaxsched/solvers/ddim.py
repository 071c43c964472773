"""DDIM: the first-order exponential integrator (Song et al. 2021, "Denoising Diffusion
Implicit Models").

One step moves a sample from noise level ``a_from`` to ``a_to`` (``a = alphas_cumprod``):

    x_to = sqrt(a_to) x0 + sqrt(1 - a_to - s^2) eps + s z

with ``(x0, eps)`` converted from the model output at ``x_from`` (eq. 12) and
``s^2 = eta^2 (1 - a_to) / (1 - a_from) * (1 - a_from / a_to)`` (eq. 16). Walking toward noise
(``a_to < a_from``, eta = 0) is DDIM inversion: the grid decides the direction, not the update.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxsched.grids.levels import Grid, Level
from jaxsched.solvers.base import Limits
from jaxsched.solvers.prediction import data_and_noise, limit_data, noise_from_data
from jaxsched.solvers.safe_math import sqrt_of_variance, sqrt_or_zero
from jaxsched.state import Thresholds


class DDIMTables(NamedTuple):
    """Per-step DDIM tables, each ``(N,)``, built once at ``init``.

    Attributes:
        start: the level each step starts from (``alpha = sqrt(a_from)``, ``sigma = sqrt(1 -
            a_from)``).
        end: the level it ends at.
        fresh_noise: the share of the end level's noise variance ``1 - a_to`` that DDIM eq. 16
            draws fresh per ``eta^2``, in ``[0, 1]`` (0 where ``a_from = 1``, where ``a_to = 0``
            (a step between two levels that underflowed to 0), and toward noise).
    """

    start: Level
    end: Level
    fresh_noise: jax.Array


def ddim_fresh_noise(start: Level, end: Level) -> jax.Array:
    """DDIM eq. 16 over ``1 - a_to``: ``(1 - a_from / a_to) / (1 - a_from)``, clamped to
    ``[0, 1]`` (its exact range for a step toward data), so the kept share ``1 - eta^2 q`` never
    rounds below 0 for ``eta <= 1``."""
    abar_from, abar_to = start.alpha**2, end.alpha**2
    beta_from = start.sigma**2
    used = (beta_from > 0) & (abar_to > 0)
    ratio = abar_from / jnp.where(used, abar_to, 1.0)
    share = (1.0 - ratio) / jnp.where(used, beta_from, 1.0)
    return jnp.where(used, jnp.clip(share, 0.0, 1.0), 0.0)


def ddim_update(
    x: jax.Array,
    model_output: jax.Array,
    row: DDIMTables,
    thresholds: Thresholds,
    *,
    prediction_type: str,
    limits: Limits,
    eta=0.0,
    use_clipped_model_output=False,
    noise: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One DDIM step for one table row (scalars); returns ``(x_to, x0)`` shaped like ``x``.

    ``use_clipped_model_output`` recomputes ``eps`` from the limited ``x0``; it may be a Python
    bool (resolved at trace time) or a traced bool. ``noise`` is the standard normal ``z``; when
    ``None`` the step is deterministic.
    """
    alpha_from, sigma_from = row.start.alpha, row.start.sigma
    x0, eps = data_and_noise(prediction_type, model_output, x, alpha_from, sigma_from)
    x0 = limit_data(
        x0, thresholds, clip_sample=limits.clip_sample, thresholding=limits.thresholding
    )
    if use_clipped_model_output is not False:
        clipped_eps = noise_from_data(x, x0, alpha_from, sigma_from)
        eps = (
            clipped_eps
            if use_clipped_model_output is True
            else (jnp.where(use_clipped_model_output, clipped_eps, eps))
        )
    if noise is None:
        return row.end.alpha * x0 + row.end.sigma * eps, x0
    std = eta * row.end.sigma * sqrt_or_zero(row.fresh_noise)
    direction = row.end.sigma * sqrt_of_variance(1.0 - eta**2 * row.fresh_noise)
    return row.end.alpha * x0 + direction * eps + std * noise, x0


@dataclasses.dataclass(frozen=True)
class DDIMSolver:
    """DDIM, deterministic (``eta = 0``) or stochastic (``eta`` in ``(0, 1]``, may be traced),
    with diffusers' clipping and dynamic thresholding of x0."""

    prediction_type: str
    limits: Limits

    order = 1
    history = 0

    def tables(self, grid: Grid, begin_index: int) -> DDIMTables:
        return DDIMTables(grid.start, grid.end, ddim_fresh_noise(grid.start, grid.end))

    def initial_history(self, shape: tuple[int, ...], dtype) -> tuple:
        return ()

    def thresholds(self, dtype) -> Thresholds:
        return self.limits.thresholds(dtype)

    def stochastic(self, params: dict[str, Any]) -> bool:
        """``eta > 0`` draws noise; a traced ``eta`` may, so it needs a key or noise too."""
        eta = params.get("eta", 0.0)
        return isinstance(eta, jax.core.Tracer) or eta > 0

    def update(self, row, x, model_output, history, noise, thresholds, params):
        x_next, x0 = ddim_update(
            x,
            model_output,
            row,
            thresholds,
            prediction_type=self.prediction_type,
            limits=self.limits,
            eta=params.get("eta", 0.0),
            use_clipped_model_output=params.get("use_clipped_model_output", False),
            noise=noise,
        )
        return x_next, x0, history
