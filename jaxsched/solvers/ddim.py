"""DDIM: the first-order exponential integrator (Song et al. 2021, "Denoising Diffusion
Implicit Models").

One step moves a sample from noise level ``a_from`` to ``a_to`` (``a = alphas_cumprod``):

    x_to = sqrt(a_to) x0 + sqrt(1 - a_to - s^2) eps + s z,    s = eta * sqrt(variance)

with ``(x0, eps)`` converted from the model output at ``x_from`` (eq. 12) and
``variance = (1 - a_to) / (1 - a_from) * (1 - a_from / a_to)`` (eq. 16). Walking toward noise
(``a_to < a_from``, eta = 0) is DDIM inversion.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsched.solvers.prediction import data_and_noise, limit_data, noise_from_data
from jaxsched.solvers.safe_math import sqrt_of_variance, sqrt_or_zero
from jaxsched.state import Thresholds


class DDIMCoefficients(NamedTuple):
    """Per-step DDIM tables, each ``(N,)``, built once at ``init``.

    Attributes:
        alpha_from: ``sqrt(a_from)``, the signal scale of the sample the step starts from.
        sigma_from: ``sqrt(1 - a_from)``, its noise scale.
        alpha_to: ``sqrt(a_to)``, the signal scale the step ends at.
        sigma_to_sq: ``1 - a_to``, the squared noise scale it ends at.
        variance: DDIM eq. 16 posterior variance per ``eta^2`` (0 where ``a_from = 1``, where
            ``a_to = 0`` (a step between two levels that underflowed to 0), and where rounding
            makes it negative: a zero-length step).
    """

    alpha_from: jax.Array
    sigma_from: jax.Array
    alpha_to: jax.Array
    sigma_to_sq: jax.Array
    variance: jax.Array


def ddim_coefficients(abar_from: jax.Array, abar_to: jax.Array) -> DDIMCoefficients:
    """Tables for steps from levels ``abar_from`` to ``abar_to`` (both ``(N,)``)."""
    beta_from = 1.0 - abar_from
    beta_to = 1.0 - abar_to
    return DDIMCoefficients(
        alpha_from=sqrt_or_zero(abar_from),
        sigma_from=sqrt_or_zero(beta_from),
        alpha_to=sqrt_or_zero(abar_to),
        sigma_to_sq=beta_to,
        variance=jnp.where(
            (beta_from > 0) & (abar_to > 0),
            jnp.maximum((beta_to / beta_from) * (1.0 - abar_from / abar_to), 0.0),
            0.0,
        ),
    )


def ddim_update(
    x: jax.Array,
    model_output: jax.Array,
    row: DDIMCoefficients,
    thresholds: Thresholds,
    *,
    prediction_type: str,
    clip_sample: bool,
    thresholding: bool,
    eta=0.0,
    use_clipped_model_output=False,
    noise: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One DDIM step for one table row (scalars); returns ``(x_to, x0)`` shaped like ``x``.

    ``use_clipped_model_output`` recomputes ``eps`` from the limited ``x0``; it may be a Python
    bool (resolved at trace time) or a traced bool. ``noise`` is the standard normal ``z``; when
    ``None`` the step is deterministic.
    """
    x0, eps = data_and_noise(prediction_type, model_output, x, row.alpha_from, row.sigma_from)
    x0 = limit_data(x0, thresholds, clip_sample=clip_sample, thresholding=thresholding)
    if use_clipped_model_output is not False:
        clipped_eps = noise_from_data(x, x0, row.alpha_from, row.sigma_from)
        eps = (
            clipped_eps
            if use_clipped_model_output is True
            else (jnp.where(use_clipped_model_output, clipped_eps, eps))
        )
    if noise is None:
        return row.alpha_to * x0 + sqrt_or_zero(row.sigma_to_sq) * eps, x0
    std = eta * sqrt_or_zero(row.variance)
    x_to = row.alpha_to * x0 + sqrt_of_variance(row.sigma_to_sq - std**2) * eps + std * noise
    return x_to, x0
