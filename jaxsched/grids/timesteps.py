"""Timestep spacings: which training timesteps the model is called at.

They depend only on static integers (``num_inference_steps``, ``T``, the spacing), so they are
computed once in NumPy at ``init`` (Lin et al. 2023, "Common Diffusion Noise Schedules and
Sample Steps are Flawed", Table 2, and diffusers' conventions).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched._checks import OptionTypeError

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
