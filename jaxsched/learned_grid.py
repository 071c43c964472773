"""Learned sampling grids: the sigma grid of an ``N``-step run, fitted with optax so that the
run lands as close as possible to a high-NFE solution of the same model.

A grid is parametrised by ``N`` logits whose softmax splits ``log sigma_max - log sigma_min``
into the ``N`` steps' shares, so every grid it can express descends from the noisiest training
sigma and stays inside the model's training range; the last step ends at the scheduler's own
final sigma (0 for DPM-Solver's ``final_sigmas_type="zero"`` and DDIM with
``set_alpha_to_one``, else the smallest training sigma). Sampling is differentiable in the grid
(``init(sigmas=...)`` builds every table from traced sigmas), so the loss
``mean |sample(grid, x_T) - reference(x_T)|^2`` over a batch of starting points is minimised by
gradient descent, as in Sabour et al. (2024), "Align Your Steps" (which fits a KL bound
instead), and Watson et al. (2022), "Learning Fast Samplers for Diffusion Models by
Differentiating Through Sample Quality".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxsched._checks import (
    OptionTypeError,
    check_callable,
    check_int,
    check_scheduler,
    concrete_value,
    real_array,
)
from jaxsched.grids.sigmas import check_sigma_grid, karras_sigmas
from jaxsched.loops import ModelFn, sample
from jaxsched.schedulers.base import Scheduler
from jaxsched.schedules import NoiseSchedule

GRID_FILE_FORMAT = "jaxsched.sigma_grid/1"
# Smallest share of the log-sigma range a step gets when a grid is turned into logits, so a
# grid whose last point is sigma_min (karras) still has finite logits.
_MIN_SHARE = 1e-3


class GridEnds(NamedTuple):
    """The fixed ends of a scheduler's grids: ``sigma_max`` (the first point), ``sigma_min``
    (the bottom of the range the steps share) and ``final_sigma`` (where the last step ends)."""

    sigma_max: jax.Array
    sigma_min: jax.Array
    final_sigma: jax.Array


class LearnedGrid(NamedTuple):
    """The result of :func:`learn_sigmas`.

    Attributes:
        sigmas: ``(N + 1,)`` the grid with the lowest loss seen, for ``init(sigmas=...)``.
        losses: ``(iterations,)`` root-mean-square distance to the reference at each iterate.
        initial_loss: the same distance for the starting grid (the result is never worse).
    """

    sigmas: jax.Array
    losses: jax.Array
    initial_loss: jax.Array


def grid_ends(scheduler: Scheduler, schedule: NoiseSchedule | None = None) -> GridEnds:
    """:class:`GridEnds` of ``scheduler`` (a forward, variance-preserving one) on its schedule."""
    capabilities = scheduler.capabilities
    if capabilities.direction != "to_data":
        raise ValueError(
            f"learn a grid for the forward scheduler, not {type(scheduler).__name__}; invert with "
            "the learned grid reversed"
        )
    if capabilities.levels != "vp":
        raise ValueError("learned grids are variance-preserving sigma grids; use_flow_sigmas=True")
    abar = scheduler.noise_schedule(schedule).alphas_cumprod
    train_sigmas = jnp.sqrt((1.0 - abar) / abar)
    sigma_min, sigma_max = train_sigmas[0], train_sigmas[-1]
    known = concrete_value(train_sigmas)
    if known is not None and not (np.isfinite(known[-1]) and known[0] > 0):
        raise ValueError(
            "a learned grid needs 0 < sigma_min and a finite sigma_max (no zero-terminal-SNR "
            "schedule, beta_start > 0)"
        )
    final = jnp.zeros_like(sigma_min) if capabilities.final_sigma == "zero" else sigma_min
    return GridEnds(sigma_max=sigma_max, sigma_min=sigma_min, final_sigma=final)


def _ending_at_final(sigmas: jax.Array, ends: GridEnds) -> jax.Array:
    """``(N,)`` model-call sigmas followed by the final sigma, ``(N + 1,)``."""
    return jnp.concatenate([sigmas, jnp.reshape(ends.final_sigma, (1,)).astype(sigmas.dtype)])


def sigmas_from_logits(logits: jax.Array, ends: GridEnds) -> jax.Array:
    """The ``(N + 1,)`` grid of ``(N,)`` logits: ``log sigma_i = log sigma_max - c_i (log
    sigma_max - log sigma_min)`` with ``c_i`` the sum of the first ``i`` softmax shares, then
    ``final_sigma``."""
    shares = jax.nn.softmax(logits)
    covered = jnp.concatenate([jnp.zeros((1,), shares.dtype), jnp.cumsum(shares)[:-1]])
    log_max, log_min = jnp.log(ends.sigma_max), jnp.log(ends.sigma_min)
    return _ending_at_final(jnp.exp(log_max - covered * (log_max - log_min)), ends)


def logits_from_sigmas(sigmas: jax.Array, ends: GridEnds) -> jax.Array:
    """``(N,)`` logits whose grid is ``sigmas`` (descending, ``(N + 1,)``), each step's share
    floored at ``1e-3``: the inverse of :func:`sigmas_from_logits` up to that floor."""
    points = jnp.concatenate([jnp.log(sigmas[:-1]), jnp.log(ends.sigma_min)[None]])
    shares = jnp.maximum(-jnp.diff(points) / (points[0] - points[-1]), _MIN_SHARE)
    return jnp.log(shares / jnp.sum(shares))


def log_uniform_sigmas(num_inference_steps: int, ends: GridEnds) -> jax.Array:
    """The ``(N + 1,)`` grid evenly spaced in ``log sigma`` between the ends (equal shares)."""
    return sigmas_from_logits(jnp.zeros((num_inference_steps,), ends.sigma_max.dtype), ends)


def karras_grid(num_inference_steps: int, ends: GridEnds) -> jax.Array:
    """The ``(N + 1,)`` Karras et al. (2022) grid (eq. 5, ``rho = 7``) between the ends."""
    sigmas = karras_sigmas(ends.sigma_min, ends.sigma_max, num_inference_steps, jnp)
    return _ending_at_final(jnp.maximum(sigmas, ends.sigma_min), ends)  # rounding below the end


def sample_on_grid(
    scheduler: Scheduler,
    model_fn: ModelFn,
    sigmas: jax.Array,
    x_T: jax.Array,
    schedule: NoiseSchedule | None = None,
) -> jax.Array:
    """A deterministic run of ``scheduler`` from ``x_T`` over the sigma grid ``sigmas``."""
    state = scheduler.init(None, jnp.shape(x_T), jnp.result_type(x_T), schedule, sigmas=sigmas)
    return sample(scheduler, state, model_fn, x_T)


def learn_sigmas(
    scheduler: Scheduler,
    model_fn: ModelFn,
    num_inference_steps: int,
    x_T: jax.Array,
    *,
    reference: jax.Array | None = None,
    reference_steps: int = 500,
    initial_sigmas: jax.Array | None = None,
    optimizer: optax.GradientTransformation | None = None,
    iterations: int = 300,
    schedule: NoiseSchedule | None = None,
) -> LearnedGrid:
    """Fit the sigma grid of an ``N``-step run of ``scheduler`` to a high-NFE solution.

    The whole optimisation is one jitted ``lax.scan`` of ``iterations`` optax updates on the
    grid's logits (see the module docstring); the grid with the lowest loss is returned.

    Args:
        scheduler: a deterministic forward scheduler (DDIM with ``eta = 0``, DPM-Solver,
            DEIS); the learned grid is for this configuration but any of them can ``init``
            with it.
        model_fn: ``(x, t) -> model output``; it is called at continuous timesteps ``t``.
        num_inference_steps: ``N``, the step budget.
        x_T: ``(batch, ...)`` starting noise to fit on (hold out others to evaluate).
        reference: the target samples for ``x_T``; by default ``scheduler`` run over
            ``reference_steps`` log-uniform steps.
        reference_steps: steps of the default reference.
        initial_sigmas: the ``(N + 1,)`` grid to start from (its step shares are kept, its
            first and final sigmas become the scheduler's ends, :func:`grid_ends`); by default
            the better of the log-uniform and the Karras (``rho = 7``) grids between the ends.
        optimizer: default ``optax.adam`` at 0.05 with cosine decay over ``iterations``.
        iterations: optimiser steps.
        schedule: replaces the config's betas, as in ``init``.

    Returns:
        A :class:`LearnedGrid`.
    """
    check_scheduler("scheduler", scheduler)
    if scheduler.capabilities.stochastic:
        raise ValueError(f"a stochastic sampler ({type(scheduler).__name__}) has no fixed target")
    check_callable("model_fn", model_fn, "(x, t) -> model output", x_T, None)
    check_int("num_inference_steps", num_inference_steps, minimum=1)
    check_int("reference_steps", reference_steps, minimum=1)
    check_int("iterations", iterations, minimum=1)
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise OptionTypeError(
            f"optimizer must be an optax.GradientTransformation such as optax.adam(0.05), got "
            f"{optimizer!r:.60}"
        )
    ends = grid_ends(scheduler, schedule)
    if reference is None:
        reference = sample_on_grid(
            scheduler, model_fn, log_uniform_sigmas(reference_steps, ends), x_T, schedule
        )
    elif jnp.shape(reference) != jnp.shape(x_T):
        raise ValueError(
            f"reference must be shaped like x_T {jnp.shape(x_T)}, got {jnp.shape(reference)}"
        )
    if initial_sigmas is None:
        starts = [
            log_uniform_sigmas(num_inference_steps, ends),
            karras_grid(num_inference_steps, ends),
        ]
    else:
        check_sigma_grid(initial_sigmas, ascending=False, zero_first=False, zero_last=True)
        if jnp.shape(initial_sigmas) != (num_inference_steps + 1,):
            raise ValueError(
                f"initial_sigmas must have num_inference_steps + 1 = {num_inference_steps + 1} "
                f"values, got {jnp.shape(initial_sigmas)[0]}"
            )
        starts = [jnp.asarray(initial_sigmas, ends.sigma_max.dtype)]
    starts = jnp.stack([logits_from_sigmas(sigmas, ends) for sigmas in starts])
    if optimizer is None:
        optimizer = optax.adam(optax.cosine_decay_schedule(0.05, iterations))

    def rms_distance(logits):
        out = sample_on_grid(scheduler, model_fn, sigmas_from_logits(logits, ends), x_T, schedule)
        return jnp.sqrt(jnp.mean((out - reference) ** 2))

    def update(carry, _):
        logits, opt_state, best_logits, best_loss = carry
        loss, grad = jax.value_and_grad(rms_distance)(logits)
        better = loss < best_loss
        best_logits = jnp.where(better, logits, best_logits)
        best_loss = jnp.where(better, loss, best_loss)
        updates, opt_state = optimizer.update(grad, opt_state, logits)
        return (optax.apply_updates(logits, updates), opt_state, best_logits, best_loss), loss

    @jax.jit
    def fit(starts):
        start_losses = jax.vmap(rms_distance)(starts)
        logits, initial_loss = starts[jnp.argmin(start_losses)], jnp.min(start_losses)
        carry = (logits, optimizer.init(logits), logits, initial_loss)
        (last, _, best_logits, best_loss), losses = lax.scan(update, carry, length=iterations)
        last_loss = rms_distance(last)
        best_logits = jnp.where(last_loss < best_loss, last, best_logits)
        return sigmas_from_logits(best_logits, ends), losses, initial_loss

    result = LearnedGrid(*fit(starts))
    check_losses_finite(result.losses)
    return result


def check_losses_finite(losses: jax.Array) -> None:
    """Raise ``ValueError`` when the optimisation produced a non-finite loss (concrete losses):
    from there on its logits are NaN and nothing more is learned, so the optimizer's settings
    (a NaN or too large learning rate) are wrong."""
    known = concrete_value(losses)
    if known is not None and not np.all(np.isfinite(known)):
        first = int(np.flatnonzero(~np.isfinite(known))[0])
        raise ValueError(
            f"the optimizer's updates made the loss non-finite at iteration {first} of "
            f"{len(known)}: check its learning rate (too large, or NaN)"
        )


def save_sigmas(path: str | os.PathLike, sigmas: jax.Array, scheduler: Scheduler) -> Path:
    """Write a grid and the scheduler config it was learned for as JSON; returns the path."""
    check_scheduler("scheduler", scheduler)
    path = Path(path)
    values = real_array("sigmas", sigmas)
    check_sigma_grid(values, ascending=False, zero_first=False, zero_last=True)
    record = {
        "format": GRID_FILE_FORMAT,
        "num_inference_steps": len(values) - 1,
        "sigmas": values.tolist(),
        "scheduler": scheduler.to_config(),
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def load_sigmas(path: str | os.PathLike) -> tuple[jax.Array, dict]:
    """``(sigmas, scheduler_config)`` from a file :func:`save_sigmas` wrote; the config can be
    passed to :func:`jaxsched.from_config`. Raises ``ValueError`` on any other file."""
    try:
        record = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a sigma grid file (invalid JSON: {err})") from err
    if not isinstance(record, dict) or record.get("format") != GRID_FILE_FORMAT:
        raise ValueError(f"{path} is not a sigma grid file (no format {GRID_FILE_FORMAT!r})")
    if not {"sigmas", "scheduler"} <= record.keys():
        raise ValueError(f"{path}: a sigma grid file needs 'sigmas' and 'scheduler' entries")
    if not isinstance(record["scheduler"], dict):
        raise ValueError(f"{path}: its 'scheduler' entry must be a scheduler config (an object)")
    try:
        sigmas = real_array("sigmas", record["sigmas"])
        check_sigma_grid(sigmas, ascending=False, zero_first=False, zero_last=True)
    except ValueError as err:  # OptionTypeError is a ValueError too
        raise ValueError(f"{path}: its 'sigmas' entry is not a valid grid: {err}") from err
    if len(sigmas) - 1 != record.get("num_inference_steps"):
        raise ValueError(f"{path}: num_inference_steps does not match the number of sigmas")
    return jnp.asarray(sigmas, jnp.result_type(float)), record["scheduler"]
