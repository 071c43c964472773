"""Whole sampling and inversion runs, each compiled as one ``lax.scan``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxsched._checks import concrete_value
from jaxsched.schedulers.base import Scheduler
from jaxsched.schedules import NoiseSchedule
from jaxsched.state import SchedulerState

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def _remaining_steps(state: SchedulerState) -> int:
    """Steps left from ``state.step_index`` when it is concrete; all ``N`` when traced."""
    index = concrete_value(state.step_index)
    n = state.num_inference_steps
    if index is None or index.ndim:
        return n
    if index >= n:
        raise ValueError(f"the state has already taken all {n} steps; call init for a new run")
    return n - int(index)


def sample(
    scheduler: Scheduler,
    state: SchedulerState,
    model_fn: ModelFn,
    x: jax.Array,
    *,
    key: jax.Array | None = None,
    noise: jax.Array | None = None,
    return_state: bool = False,
    **step_kwargs: Any,
) -> jax.Array | tuple[SchedulerState, jax.Array]:
    """Run the remaining steps of ``state`` from ``x`` with one ``lax.scan``.

    Works for every scheduler, forward or inverse: each step calls ``model_fn(x, t)`` with
    ``t = state.timesteps[state.step_index]`` and then ``scheduler.step``.

    Args:
        scheduler: the scheduler ``state`` was built by.
        state: from ``scheduler.init``; the run starts at its ``step_index``.
        model_fn: ``(x, t) -> model output`` shaped like ``x``.
        x: the starting sample ``(batch, ...)``: noise to sample, data to invert.
        key: for stochastic steps, split into one key per step.
        noise: for stochastic steps, the per-step noise ``(steps, *x.shape)`` instead of ``key``.
        return_state: also return the final state (its ``pred_original_sample`` etc.).
        **step_kwargs: passed to every ``scheduler.step`` (e.g. ``eta``,
            ``use_clipped_model_output``).

    Returns:
        The final sample, or ``(state, sample)`` with ``return_state``.
    """
    length = _remaining_steps(state)
    if key is not None and noise is not None:
        raise ValueError("pass either key or noise to sample, not both")
    per_step: dict[str, jax.Array] = {}
    if key is not None:
        per_step["key"] = jax.random.split(key, length)
    if noise is not None:
        if jnp.shape(noise) != (length, *jnp.shape(x)):
            raise ValueError(
                f"noise must have shape {(length, *jnp.shape(x))} (one sample per step), "
                f"got {jnp.shape(noise)}"
            )
        per_step["noise"] = noise

    def body(carry, step_inputs):
        state, x = carry
        t = state.timesteps[state.step_index]
        state, x = scheduler.step(state, model_fn(x, t), t, x, **step_inputs, **step_kwargs)
        return (state, x), None

    (state, x), _ = lax.scan(body, (state, x), per_step, length=length)
    return (state, x) if return_state else x


def invert(
    scheduler: Scheduler,
    model_fn: ModelFn,
    x0: jax.Array,
    num_inference_steps: int,
    *,
    schedule: NoiseSchedule | None = None,
    **kwargs: Any,
) -> jax.Array:
    """Map data ``x0`` toward noise with ``scheduler.inverse()``: init and :func:`sample` in one.

    ``scheduler`` is the forward scheduler whose sampling run the inversion should undo.
    ``kwargs`` go to :func:`sample`.
    """
    inverse = scheduler.inverse()
    state = inverse.init(num_inference_steps, jnp.shape(x0), jnp.result_type(x0), schedule)
    return sample(inverse, state, model_fn, x0, **kwargs)
