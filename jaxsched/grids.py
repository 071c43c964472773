"""Step grids: which timesteps the model is called at, and which noise levels each step joins.

Timestep spacings depend only on static integers (``num_inference_steps``, ``T``, the spacing),
so they are computed once in NumPy at ``init``; DDIM's noise levels are gathered from the
(possibly traced) schedule by :func:`levels_at`. Sigma grids depend on the schedule and take an
array module (see below).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxsched._checks import OptionTypeError, concrete_value
from jaxsched.schedules import log_sigmas

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
# Index meaning "the boundary level" (DDIM's final / initial alpha), not a training timestep.
BOUNDARY = -1


class DDIMGrid(NamedTuple):
    """Integer grid of a DDIM run, all arrays ``(N,)`` int64.

    Attributes:
        timesteps: the timestep the model is called with at each step.
        index_from: training index of the noise level each step starts from.
        index_to: training index of the noise level each step ends at; ``BOUNDARY`` (-1) where
            that level is the scheduler's final/initial alpha instead of a training timestep.
    """

    timesteps: np.ndarray
    index_from: np.ndarray
    index_to: np.ndarray


def spaced_timesteps(
    spacing: str, num_inference_steps: int, num_train_timesteps: int, steps_offset: int = 0
) -> np.ndarray:
    """Descending integer timesteps, ``(N,)``; Lin et al. (2023), Table 2.

    - ``leading``: ``i * (T // N) + steps_offset``.
    - ``trailing``: ``round(T - i * T / N) - 1``.
    - ``linspace``: ``round(linspace(0, T - 1, N))``.

    diffusers builds ``trailing`` with a float ``np.arange``, which for 62 values of
    ``N <= 1000`` (61, 103, ...) yields ``N + 1`` entries ending at -1; this builds exactly ``N``
    (see the README's "Differences from diffusers").
    """
    n, t = num_inference_steps, num_train_timesteps
    if spacing == "leading":
        ascending = np.arange(n, dtype=np.int64) * (t // n) + steps_offset
        return ascending[::-1].copy()
    if spacing == "trailing":
        return trailing_timesteps(n, t, t)
    if spacing == "linspace":
        return np.linspace(0, t - 1, n).round()[::-1].astype(np.int64)
    raise ValueError(f"timestep_spacing must be one of {list(TIMESTEP_SPACINGS)}, got {spacing!r}")


def trailing_timesteps(n: int, last_timestep: int, num_train_timesteps: int) -> np.ndarray:
    """``round(last - i * T / n) - 1`` for the ``i`` that keep ``last - i * T / n > 0`` (at most
    ``n``), descending. Values follow ``np.arange(last, 0, -T / n)``, which steps by the rounded
    difference of its first two entries; its spurious last entry (a float just above 0) is not
    produced."""
    count = int(np.ceil(last_timestep / (num_train_timesteps / n) - 1e-9))
    stride = (last_timestep - num_train_timesteps / n) - last_timestep
    return np.round(last_timestep + np.arange(min(count, n)) * stride).astype(np.int64) - 1


def ddim_grid(
    spacing: str,
    num_inference_steps: int,
    num_train_timesteps: int,
    steps_offset: int = 0,
    *,
    inverse: bool = False,
) -> DDIMGrid:
    """The grid of ``DDIMScheduler`` (``inverse=False``) or ``DDIMInverseScheduler``.

    Both keep diffusers' convention that a step spans ``T // N`` training timesteps whatever the
    spacing. Forward: the model is called at ``t``, the step goes from level ``t`` to
    ``t - T // N`` (the final alpha below 0). Inverse: timesteps ascend and the model is called
    at the *destination* ``t``; the step goes from ``min(t - T // N, T - 1)`` (the initial alpha
    below 0) to ``t``. The inverse step at ``t`` therefore undoes the forward step that called
    the model at ``t``.

    Raises:
        ValueError: when ``steps_offset`` pushes a timestep outside ``0 .. T - 1``.
    """
    timesteps = spaced_timesteps(spacing, num_inference_steps, num_train_timesteps, steps_offset)
    if timesteps.max() >= num_train_timesteps or timesteps.min() < 0:
        raise ValueError(
            f"steps_offset={steps_offset} with num_inference_steps={num_inference_steps} puts "
            f"timestep {timesteps.max()} outside 0..{num_train_timesteps - 1}"
        )
    stride = num_train_timesteps // num_inference_steps
    if inverse:
        timesteps = timesteps[::-1].copy()
        index_from = np.minimum(timesteps - stride, num_train_timesteps - 1)
        index_from = np.where(index_from >= 0, index_from, BOUNDARY)
        return DDIMGrid(timesteps=timesteps, index_from=index_from, index_to=timesteps)
    index_to = np.where(timesteps - stride >= 0, timesteps - stride, BOUNDARY)
    return DDIMGrid(timesteps=timesteps, index_from=timesteps, index_to=index_to)


def levels_at(alphas_cumprod: jax.Array, index: np.ndarray, boundary_alpha) -> jax.Array:
    """``alphas_cumprod[index]``, with ``boundary_alpha`` where ``index == BOUNDARY``; ``(N,)``."""
    gathered = alphas_cumprod[np.maximum(index, 0)]
    return jnp.where(index == BOUNDARY, jnp.asarray(boundary_alpha, gathered.dtype), gathered)


# -- sigma grids (DPM-Solver, DEIS) -------------------------------------------------------------
#
# These formulas take an array module ``xp``: NumPy (float64, exactly as diffusers computes its
# grids) when the schedule is concrete, ``jax.numpy`` when it is traced (a vmap over schedules).

SIGMA_SPACINGS = ("karras", "lu", "exponential", "beta", "flow")
KARRAS_RHO = 7.0  # Karras et al. (2022), eq. 5
BETA_SIGMAS_SHAPE = (
    0.6  # Beta(0.6, 0.6) quantiles: Lee et al. (2024), "Beta Sampling is All You Need"
)


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
                sigma_max,
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


# Relative slack of the sigma_max check (a grid computed in float64 against float32 tables).
SIGMA_MAX_TOLERANCE = 1e-4
# |mu| beyond which the dynamic flow shift exp(mu) leaves float64 (or rounds every sigma to 0/1).
MU_LIMIT = 700.0


def flow_shift_of_mu(mu):
    """The dynamic flow shift ``exp(mu)`` (Esser et al. 2024, sec. 5.3.2), in float64 like
    diffusers' ``np.exp(mu)`` when ``mu`` is concrete. ``mu`` must be a finite real scalar with
    ``|mu| <= 700`` (``exp`` stays a positive float64): raises when concrete, a debug check
    when traced."""
    if isinstance(mu, (str, bytes)) or np.ndim(mu) != 0:
        raise OptionTypeError(f"mu must be a real scalar, got {mu!r}")
    if isinstance(mu, jax.core.Tracer):
        checkify.debug_check(
            jnp.abs(mu) <= MU_LIMIT, f"mu must be finite with |mu| <= {MU_LIMIT}, got {{}}", mu
        )
        return jnp.exp(mu)
    try:
        value = float(np.asarray(mu))
    except (TypeError, ValueError) as err:
        raise OptionTypeError(f"mu must be a real scalar, got {mu!r}") from err
    if not abs(value) <= MU_LIMIT:
        raise ValueError(
            f"mu must be finite with |mu| <= {MU_LIMIT} (the flow shift is exp(mu); the Flux and "
            f"SD3 pipelines use about 0.5 to 1.2), got {value}"
        )
    return math.exp(value)


def check_custom_timesteps(timesteps, num_train_timesteps: int) -> np.ndarray:
    """Custom timesteps as a ``(N,)`` int64 array: 1-D, non-empty, integer-valued, descending
    (equal neighbours are zero-length steps) and in ``0..T-1``; raises naming ``timesteps``."""
    if isinstance(timesteps, jax.core.Tracer):
        raise OptionTypeError(
            "timesteps must be concrete (they fix the grid's shape and tables); build the state "
            "outside jit, or pass a traced grid as sigmas="
        )
    try:
        values = np.asarray(timesteps)
    except (TypeError, ValueError) as err:
        raise OptionTypeError(f"timesteps must be a 1-D array of integers: {err}") from err
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise OptionTypeError(f"timesteps must be integers, got dtype {values.dtype}")
    if values.ndim == 0:
        raise OptionTypeError(f"timesteps must be a 1-D sequence of integers, got {values!r}")
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        raise ValueError(f"timesteps must be integers (whole numbers), got {values.tolist()[:8]}")
    if np.any(values < 0) or np.any(values >= num_train_timesteps):
        raise ValueError(
            f"timesteps must lie in 0..{num_train_timesteps - 1}, got {values.tolist()[:8]}"
        )
    if np.any(np.diff(values) > 0):
        raise ValueError(
            "timesteps must be descending (noise to data; invert with the inverse scheduler), "
            f"got {values.tolist()[:8]}"
        )
    return values.astype(np.int64)


def flow_sigmas(n: int, num_train_timesteps: int, shift, xp):
    """Rectified-flow sigmas ``(n,)``, descending, shifted by ``shift * s / (1 + (shift - 1) s)``
    (Esser et al. 2024, "Scaling Rectified Flow Transformers", eq. 23)."""
    s = 1.0 - xp.linspace(1.0, 1.0 / num_train_timesteps, n + 1)
    s = shift * s / (1 + (shift - 1) * s)
    return s[::-1][:-1]


def _leading_stride(span: int, n: int) -> int:
    """``span // (n + 1)``, DPM-Solver's ``leading`` stride; 0 would make every timestep equal."""
    stride = span // (n + 1)
    if stride == 0:
        raise ValueError(
            f"timestep_spacing='leading' spaces {n} steps over {span} timesteps with a stride of "
            f"{span} // {n + 1} = 0, so every timestep would be the same (diffusers runs that "
            "degenerate grid); use fewer steps, or 'trailing' or 'linspace'"
        )
    return stride


def dpm_timesteps(
    spacing: str, n: int, last_timestep: int, num_train_timesteps: int, steps_offset: int
) -> np.ndarray:
    """DPM-Solver's descending integer timesteps, ``(n,)``, below ``last_timestep``.

    ``linspace`` and ``leading`` space ``n + 1`` points and drop the last (t = 0); ``trailing``
    steps down from ``last_timestep`` by ``T / n`` (exactly ``n`` of them; see
    :func:`trailing_timesteps` for the float-arange quirk it avoids).
    """
    if spacing == "linspace":
        return np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        stride = _leading_stride(last_timestep, n)
        return (np.arange(n + 1) * stride)[::-1][:-1].astype(np.int64) + steps_offset
    return trailing_timesteps(n, last_timestep, num_train_timesteps)


def inverse_dpm_timesteps(
    spacing: str, n: int, noisiest: int, num_train_timesteps: int, steps_offset: int
) -> np.ndarray:
    """DPM-Solver inversion's ascending integer timesteps, ``(n,)``, up to ``noisiest``."""
    if spacing == "linspace":
        return np.linspace(0, noisiest, n + 1).round()[:-1].astype(np.int64)
    if spacing == "leading":
        stride = _leading_stride(noisiest + 1, n)
        return (np.arange(n + 1) * stride)[:-1].astype(np.int64) + steps_offset
    return trailing_timesteps(n, noisiest + 1, num_train_timesteps)[::-1].copy()
