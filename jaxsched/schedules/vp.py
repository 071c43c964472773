"""Variance-preserving training noise schedules: betas -> alphas_cumprod, as pure functions.

A schedule is a :class:`NoiseSchedule` pytree of two ``(T,)`` arrays. Every function here
is traceable in its floating-point arguments (``beta_start``, ``beta_end``, ``trained_betas``)
so a batch of schedules is one ``jax.vmap`` away; the schedule kind and the number of training
timesteps ``T`` fix shapes and code paths, so they are static Python values.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxsched._checks import (
    OptionTypeError,
    check_bool,
    check_choice,
    check_float,
    check_floating_dtype,
    check_int,
    concrete_value,
    real_array,
)
from jaxsched.schedules.common import (
    check_noising_inputs,
    check_timesteps_type,
    compute_dtype,
    default_float_dtype,
    noised,
    per_sample,
)

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# Largest beta of the cosine schedule, as in Nichol & Dhariwal (2021), eq. 17.
_COSINE_MAX_BETA = 0.999
_COSINE_OFFSET = 0.008


class NoiseSchedule(NamedTuple):
    """The discrete forward process ``q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I)``.

    Attributes:
        betas: ``(T,)`` per-timestep noise variances ``beta_t``.
        alphas_cumprod: ``(T,)`` ``a_t = prod_{s <= t} (1 - beta_s)``.
    """

    betas: jax.Array
    alphas_cumprod: jax.Array


def linear_betas(beta_start, beta_end, num_train_timesteps: int, dtype=None) -> jax.Array:
    """``(T,)`` betas evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020)."""
    dtype = dtype or default_float_dtype()
    return jnp.linspace(
        jnp.asarray(beta_start, dtype), jnp.asarray(beta_end, dtype), num_train_timesteps
    ).astype(dtype)


def scaled_linear_betas(beta_start, beta_end, num_train_timesteps: int, dtype=None) -> jax.Array:
    """``(T,)`` betas whose square roots are evenly spaced (Stable Diffusion's schedule)."""
    dtype = dtype or default_float_dtype()
    sqrt_betas = linear_betas(
        jnp.sqrt(jnp.asarray(beta_start, dtype)),
        jnp.sqrt(jnp.asarray(beta_end, dtype)),
        num_train_timesteps,
        dtype,
    )
    return sqrt_betas**2


def _cosine_betas(num_train_timesteps: int) -> np.ndarray:
    """Float64 NumPy betas of the cosine schedule (see :func:`cosine_betas`)."""
    grid = np.arange(num_train_timesteps + 1, dtype=np.float64) / num_train_timesteps
    alpha_bar = np.cos((grid + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * np.pi / 2) ** 2
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], _COSINE_MAX_BETA)


def cosine_betas(num_train_timesteps: int, dtype=None) -> jax.Array:
    """``(T,)`` betas of the cosine schedule, Nichol & Dhariwal (2021), eq. 17.

    ``abar(s) = cos^2((s + 0.008) / 1.008 * pi / 2)`` and
    ``beta_i = min(1 - abar((i + 1) / T) / abar(i / T), 0.999)``. It depends on ``T`` only, so
    it is computed once in float64 NumPy and cast, as diffusers does.
    """
    return jnp.asarray(_cosine_betas(num_train_timesteps), dtype or default_float_dtype())


def _concrete_linspace(start: float, end: float, n: int, dtype) -> np.ndarray:
    """``(n,)`` evenly spaced values rounded as torch's ``linspace`` rounds them: in float32 the
    step is a float32 and each value is ``start + i step`` (first half) or ``end - (n-1-i) step``
    (second half) rounded once."""
    dtype = np.dtype(dtype)
    lo, hi = dtype.type(start), dtype.type(end)
    if n == 1:
        return np.array([lo], dtype)
    step = dtype.type((hi - lo) / dtype.type(n - 1))
    i = np.arange(n)
    wide = np.float64(step)
    values = np.where(i < n // 2, np.float64(lo) + wide * i, np.float64(hi) - wide * (n - 1 - i))
    return values.astype(dtype)


def _cumprod(alphas: np.ndarray) -> np.ndarray:
    """Cumulative product accumulated in float64 (as torch does on CPU), in ``alphas``' dtype."""
    return np.cumprod(alphas.astype(np.float64)).astype(alphas.dtype)


def _concrete_rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    sqrt_abar = np.sqrt(_cumprod(1 - betas))
    first, last = sqrt_abar[0], sqrt_abar[-1]
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    abar = sqrt_abar**2
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.where(abar[:-1] > 0, abar[1:] / abar[:-1], 0.0)  # 0 / 0 after an underflow
    return 1 - np.concatenate([abar[:1], ratios.astype(abar.dtype)])


def _concrete_schedule(
    kind, beta_start, beta_end, num_train_timesteps, trained_betas, rescale, dtype
) -> NoiseSchedule:
    """The schedule of concrete options in NumPy, rounded exactly as diffusers builds it."""
    dtype = np.dtype(dtype)
    if trained_betas is not None:
        betas = np.asarray(trained_betas, dtype)
    elif kind == "linear":
        betas = _concrete_linspace(beta_start, beta_end, num_train_timesteps, dtype)
    elif kind == "scaled_linear":
        root = _concrete_linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype)
        betas = root**2
    else:
        betas = _cosine_betas(num_train_timesteps).astype(dtype)
    if rescale:
        betas = _concrete_rescale_zero_terminal_snr(betas)
    if not np.all((betas >= 0) & (betas <= 1)):
        raise ValueError(f"betas must lie in [0, 1], got {betas.min()}..{betas.max()}")
    return NoiseSchedule(betas=jnp.asarray(betas), alphas_cumprod=jnp.asarray(_cumprod(1 - betas)))


def rescale_zero_terminal_snr(betas: jax.Array) -> jax.Array:
    """Rescale ``(T,)`` betas so the last timestep has zero SNR.

    Lin et al. (2023), "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    Algorithm 1: shift and scale ``sqrt(alphas_cumprod)`` so it runs from its first value to 0.
    Where ``alphas_cumprod`` underflowed to 0 before the end, the betas there are 1 (the level
    stays 0) instead of ``0 / 0``.
    """
    sqrt_abar = jnp.sqrt(jnp.cumprod(1.0 - betas))
    first, last = sqrt_abar[0], sqrt_abar[-1]
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    abar = sqrt_abar**2
    previous = abar[:-1]
    ratios = jnp.where(previous > 0, abar[1:] / jnp.where(previous > 0, previous, 1.0), 0.0)
    alphas = jnp.concatenate([abar[:1], ratios])
    return 1.0 - alphas


def noise_schedule(
    kind: str = "linear",
    *,
    beta_start=0.0001,
    beta_end=0.02,
    num_train_timesteps: int = 1000,
    trained_betas=None,
    rescale_betas_zero_snr: bool = False,
    dtype=None,
) -> NoiseSchedule:
    """Build a :class:`NoiseSchedule` the way diffusers' schedulers build theirs.

    Args:
        kind: ``"linear"``, ``"scaled_linear"`` or ``"squaredcos_cap_v2"`` (static).
        beta_start, beta_end: first and last beta (traceable; unused by the cosine kind).
        num_train_timesteps: ``T``, the number of training timesteps (static).
        trained_betas: optional ``(T,)`` betas; when given they replace ``kind`` (traceable).
        rescale_betas_zero_snr: apply :func:`rescale_zero_terminal_snr` (static).
        dtype: table dtype; defaults to float32 (float64 with x64 enabled).

    Returns:
        ``NoiseSchedule(betas, alphas_cumprod)``, each of shape ``(T,)``. When the options are
        concrete (the usual case, also under ``jit``) the tables are computed in NumPy with
        torch's rounding, so they equal diffusers' bit for bit; traced options use the same
        formulas in JAX.
    """
    if trained_betas is None:  # given betas replace the kind, as in diffusers
        check_choice("beta_schedule", kind, BETA_SCHEDULES)
    check_int("num_train_timesteps", num_train_timesteps, minimum=1)
    check_bool("rescale_betas_zero_snr", rescale_betas_zero_snr)
    try:
        dtype = jnp.dtype(dtype or default_float_dtype())
    except TypeError as err:
        raise OptionTypeError(f"dtype must be a floating-point dtype, got {dtype!r}") from err
    check_floating_dtype("noise_schedule dtype", dtype)
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if concrete_value(value) is not None:
            known = real_array(name, value)
            if known.ndim != 0:
                raise OptionTypeError(f"{name} must be a real scalar, got shape {known.shape}")
            check_float(name, float(known), low=0.0, high=1.0)
    if trained_betas is not None and concrete_value(trained_betas) is not None:
        trained_betas = real_array("trained_betas", trained_betas)
    if trained_betas is not None and np.shape(trained_betas) != (num_train_timesteps,):
        raise ValueError(
            f"trained_betas must have shape ({num_train_timesteps},) to match "
            f"num_train_timesteps={num_train_timesteps}, got {np.shape(trained_betas)}"
        )
    if all(concrete_value(v) is not None for v in (beta_start, beta_end, trained_betas)):
        return _concrete_schedule(
            kind,
            float(beta_start),
            float(beta_end),
            num_train_timesteps,
            trained_betas,
            rescale_betas_zero_snr,
            dtype,
        )
    if trained_betas is not None:
        betas = jnp.asarray(trained_betas, dtype)
    elif kind == "linear":
        betas = linear_betas(beta_start, beta_end, num_train_timesteps, dtype)
    elif kind == "scaled_linear":
        betas = scaled_linear_betas(beta_start, beta_end, num_train_timesteps, dtype)
    else:
        betas = cosine_betas(num_train_timesteps, dtype)
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    checkify.debug_check(
        jnp.all((betas >= 0) & (betas <= 1)),
        "betas must lie in [0, 1], got {}..{}",
        jnp.min(betas),
        jnp.max(betas),
    )
    return NoiseSchedule(betas=betas, alphas_cumprod=jnp.cumprod(1.0 - betas))


# Floor of log sigma where a level is exactly noise-free (beta_start = 0), as sigma_to_t's.
_LOG_SIGMA_FLOOR = float(np.log(1e-10))


def log_sigmas(alphas_cumprod: jax.Array) -> jax.Array:
    """``log sigma = log sqrt((1 - a) / a)`` of each level (``-inf`` where ``a = 1``)."""
    return 0.5 * (jnp.log1p(-alphas_cumprod) - jnp.log(alphas_cumprod))


def alphas_cumprod_at(schedule: NoiseSchedule, timesteps) -> jax.Array:
    """``a_t`` at integer or continuous training timesteps (any shape).

    Integer ``t`` index the table. Floating ``t`` interpolate ``log sigma = log sqrt((1 - a)
    / a)`` linearly between neighbouring timesteps, the inverse of the continuous timestep a
    custom sigma grid calls the model with (:func:`jaxsched.grids.continuous_timesteps`), and
    are differentiable in ``t``. Out-of-range timesteps raise when concrete and give NaN when
    traced (never a silent clamp).
    """
    if not isinstance(schedule, NoiseSchedule):
        raise OptionTypeError(
            f"schedule must be a jaxsched.NoiseSchedule, got {type(schedule).__name__}"
        )
    abar = schedule.alphas_cumprod
    num_train_timesteps = abar.shape[-1]
    check_timesteps_type(timesteps)
    t = jnp.asarray(timesteps)
    known = concrete_value(timesteps)
    if known is None:
        checkify.debug_check(
            jnp.all((t >= 0) & (t <= num_train_timesteps - 1)),
            f"timesteps must lie in 0..{num_train_timesteps - 1}, got {{}}",
            t,
        )
    elif not np.all((known >= 0) & (known <= num_train_timesteps - 1)):
        raise ValueError(
            f"timesteps must lie in 0..{num_train_timesteps - 1}, got {known.ravel().tolist()}"
        )
    if jnp.issubdtype(t.dtype, jnp.integer):
        return jnp.take(abar, t, mode="fill", fill_value=jnp.nan)
    table = jnp.maximum(log_sigmas(abar), _LOG_SIGMA_FLOOR)
    grid = jnp.arange(num_train_timesteps, dtype=abar.dtype)
    inside = (t >= 0) & (t <= num_train_timesteps - 1)
    log_sigma = jnp.interp(t.astype(abar.dtype), grid, table)
    return jnp.where(inside, jax.nn.sigmoid(-2.0 * log_sigma), jnp.nan)


def _alphas_at(schedule: NoiseSchedule, timesteps, ndim: int) -> tuple[jax.Array, jax.Array]:
    """``sqrt(a_t)``, ``sqrt(1 - a_t)`` shaped to broadcast against a rank-``ndim`` sample."""
    abar = per_sample(alphas_cumprod_at(schedule, timesteps), ndim)
    return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)


def add_noise(schedule: NoiseSchedule, original_samples, noise, timesteps) -> jax.Array:
    """Forward diffusion ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` (Ho et al. 2020, eq. 4).

    ``timesteps`` is a scalar or one per leading-axis item ``(B,)``, integer or continuous (see
    :func:`alphas_cumprod_at`). Computed in at least float32 and returned in the samples'
    dtype.
    """
    check_noising_inputs(original_samples, noise, timesteps)
    abar = alphas_cumprod_at(schedule, timesteps)
    return noised(original_samples, noise, jnp.sqrt(abar), jnp.sqrt(1.0 - abar), abar.dtype)


def get_velocity(schedule: NoiseSchedule, sample, noise, timesteps) -> jax.Array:
    """Velocity target ``v = sqrt(a_t) eps - sqrt(1 - a_t) x_0`` (Salimans & Ho 2022, sec. 4)."""
    check_noising_inputs(sample, noise, timesteps)
    x0 = jnp.asarray(sample)
    sqrt_a, sqrt_b = _alphas_at(schedule, timesteps, x0.ndim)
    dtype = compute_dtype(x0.dtype, schedule.alphas_cumprod.dtype)
    out = sqrt_a * jnp.asarray(noise).astype(dtype) - sqrt_b * x0.astype(dtype)
    return out.astype(x0.dtype)
