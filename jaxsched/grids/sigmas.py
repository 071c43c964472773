"""Sigma spacings and custom sigma grids (DPM-Solver, DEIS, custom and learned grids).

These formulas take an array module ``xp``: NumPy (float64, exactly as diffusers computes its
grids) when the schedule is concrete, ``jax.numpy`` when it is traced (a vmap over schedules).
A grid sigma is ``sqrt((1 - a) / a)`` (diffusers' ``scheduler.sigmas``), or the flow sigma.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxsched._checks import OptionTypeError, concrete_value
from jaxsched.schedules import log_sigmas, shift_sigmas

SIGMA_SPACINGS = ("karras", "lu", "exponential", "beta", "flow")
KARRAS_RHO = 7.0  # Karras et al. (2022), eq. 5
BETA_SIGMAS_SHAPE = (
    0.6  # Beta(0.6, 0.6) quantiles: Lee et al. (2024), "Beta Sampling is All You Need"
)
# Relative slack of the sigma_max check (a grid computed in float64 against float32 tables).
SIGMA_MAX_TOLERANCE = 1e-4


def array_module(*values):
    """NumPy when every value is concrete, else ``jax.numpy``."""
    return jnp if any(isinstance(v, jax.core.Tracer) for v in values) else np


def sigma_to_t(sigma, log_sigmas, xp):
    """Continuous training timestep of each ``sigma``: linear interpolation in ``log sigma``
    from the last training timestep whose ``log sigma`` is at most it (diffusers' rule, which
    also holds where a zero-SNR clamp makes ``log_sigmas`` non-monotonic), clamped to
    ``0 .. T - 1``."""
    log_sigma = xp.log(xp.maximum(sigma, 1e-10))
    count = log_sigmas.shape[0]
    below = log_sigmas[:, None] <= xp.reshape(log_sigma, (1, -1))
    last_below = xp.max(xp.where(below, xp.arange(count)[:, None], 0), axis=0)
    low = xp.reshape(xp.clip(last_below, 0, count - 2), xp.shape(log_sigma))
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = xp.clip((lo - log_sigma) / (lo - hi), 0.0, 1.0)
    return (1.0 - w) * low + w * (low + 1)


def check_sigma_grid(
    sigmas, *, ascending: bool, zero_first: bool, zero_last: bool, sigma_max=None
) -> None:
    """Check a custom ``(N + 1,)`` sigma grid: 1-D floating point with at least two points,
    finite, monotone in the run's direction (equal neighbours are zero-length steps), positive
    except where ``zero_first`` / ``zero_last`` allow a zero end (``alphas_cumprod = 1``), and
    at most ``sigma_max`` (the largest training sigma, where given: the model knows no noisier
    level). Values are checked when concrete; a traced grid is checked under
    :func:`jaxsched.checked`."""
    traced = isinstance(sigmas, jax.core.Tracer)
    if not traced:
        try:
            sigmas = np.asarray(sigmas)
        except (TypeError, ValueError) as err:
            raise OptionTypeError(f"sigmas must be a 1-D floating-point array: {err}") from err
    if not jnp.issubdtype(sigmas.dtype, jnp.floating):
        raise OptionTypeError(f"sigmas must be floating point, got dtype {sigmas.dtype}")
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(
            f"sigmas must be a 1-D grid of N + 1 >= 2 values, got shape {sigmas.shape}"
        )
    xp = jnp if traced else np
    values = sigmas if traced else sigmas.astype(np.float64)
    steps = xp.diff(values) if ascending else -xp.diff(values)
    positive = values[int(zero_first) : values.shape[0] - int(zero_last)]
    finite = xp.all(xp.isfinite(values)) & xp.all(values >= 0) & xp.all(positive > 0)
    order = "ascending (data to noise)" if ascending else "descending (noise to data)"
    limit = None if sigma_max is None else sigma_max * (1 + SIGMA_MAX_TOLERANCE)
    if traced:
        checkify.debug_check(finite, "sigmas must be finite and positive, got {}", values)
        checkify.debug_check(xp.all(steps >= 0), f"sigmas must be {order}, got {{}}", values)
        if limit is not None:
            checkify.debug_check(
                xp.all(values <= limit),
                "sigmas must lie within the training range (at most sigma_max = {}), got {}",
                jnp.asarray(sigma_max),
                values,
            )
        return
    if not finite:
        raise ValueError(f"sigmas must be finite and positive, got {values.tolist()[:8]}...")
    if np.any(steps < 0):
        raise ValueError(f"sigmas must be {order}, got {values.tolist()[:8]}...")
    known_limit = None if limit is None else concrete_value(limit)
    if known_limit is not None and np.any(values > known_limit):
        raise ValueError(
            f"sigmas must lie within the training range (at most sigma_max = "
            f"{float(sigma_max):.6g}, the noisiest training level), got {values.max():.6g}"
        )


def continuous_timesteps(sigmas, alphas_cumprod: jax.Array) -> jax.Array:
    """The continuous training timestep of each VP ``sigma = sqrt((1 - a) / a)``, by
    :func:`sigma_to_t` on the schedule's table; ``(n,)`` floats, differentiable in ``sigmas``.
    The inverse of :func:`jaxsched.schedules.alphas_cumprod_at`."""
    table = log_sigmas(alphas_cumprod)
    return sigma_to_t(jnp.asarray(sigmas, alphas_cumprod.dtype), table, jnp)


def karras_sigmas(sigma_min, sigma_max, n: int, xp):
    """Karras et al. (2022), eq. 5: ``rho = 7`` power-spaced sigmas, descending ``(n,)``."""
    ramp = xp.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1 / KARRAS_RHO), sigma_max ** (1 / KARRAS_RHO)
    return (hi + ramp * (lo - hi)) ** KARRAS_RHO


def exponential_sigmas(sigma_min, sigma_max, n: int, xp):
    """Sigmas evenly spaced in ``log sigma``, descending ``(n,)``."""
    return xp.exp(xp.linspace(xp.log(sigma_max), xp.log(sigma_min), n))


def beta_sigmas(sigma_min, sigma_max, n: int, xp):
    """``sigma_min + ppf(1 - i / (n - 1)) (sigma_max - sigma_min)`` with the Beta(0.6, 0.6)
    quantile function (Lee et al. 2024). The quantiles depend on ``n`` only; like diffusers this
    needs scipy."""
    try:
        from scipy.stats import beta as beta_distribution
    except ImportError as err:  # pragma: no cover - scipy ships with the test extra
        raise ImportError("use_beta_sigmas needs scipy: pip install scipy") from err
    quantiles = beta_distribution.ppf(
        1 - np.linspace(0, 1, n), BETA_SIGMAS_SHAPE, BETA_SIGMAS_SHAPE
    )
    return sigma_min + xp.asarray(quantiles) * (sigma_max - sigma_min)


def flow_sigmas(n: int, num_train_timesteps: int, shift, xp):
    """Rectified-flow sigmas ``(n,)``, descending, shifted by ``shift * s / (1 + (shift - 1) s)``
    (Esser et al. 2024, "Scaling Rectified Flow Transformers", eq. 23)."""
    s = shift_sigmas(1.0 - xp.linspace(1.0, 1.0 / num_train_timesteps, n + 1), shift)
    return s[::-1][:-1]
