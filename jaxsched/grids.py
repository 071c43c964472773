"""Step grids: which timesteps the model is called at, and which noise levels each step joins.

Everything here depends only on static integers (``num_inference_steps``, ``T``, the spacing),
so grids are computed once in NumPy at ``init``. The noise levels themselves are gathered from
the (possibly traced) schedule by :func:`levels_at`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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
        # np.arange(T, 0, -T / N) steps by the rounded difference of its first two entries.
        stride = (t - t / n) - t
        return np.round(t + np.arange(n) * stride).astype(np.int64) - 1
    if spacing == "linspace":
        return np.linspace(0, t - 1, n).round()[::-1].astype(np.int64)
    raise ValueError(f"timestep_spacing must be one of {list(TIMESTEP_SPACINGS)}, got {spacing!r}")


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
