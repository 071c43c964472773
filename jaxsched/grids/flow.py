"""The step grids of the flow-matching schedulers (diffusers' ``FlowMatchEulerDiscreteScheduler``
and ``FlowMatchHeunDiscreteScheduler``): flow sigmas ``s`` in ``[0, 1]`` with ``x = (1 - s) x0
+ s eps``, the model called at ``t = s T``.

With a concrete schedule and shift the sigmas are computed in NumPy with diffusers' dtypes (a
float64 ``linspace`` of timesteps, float32 sigmas), so timesteps equal diffusers'; a traced
shift, ``mu`` or schedule runs the same formulas in ``jax.numpy``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched._checks import OptionTypeError
from jaxsched.grids.levels import Grid, chained, flow_levels
from jaxsched.grids.sigmas import (
    array_module,
    beta_sigmas,
    check_sigma_grid,
    exponential_sigmas,
    karras_sigmas,
)
from jaxsched.schedules.common import default_float_dtype
from jaxsched.schedules.flow import FlowSchedule, shift_sigmas, stretch_to_terminal, time_shift

#: diffusers' UniPC moves a first flow sigma of 1 (lambda = -inf) down by this much.
FIRST_SIGMA_OFFSET = 1e-6


class FlowGridOptions(NamedTuple):
    """The static options that shape a flow-matching grid.

    Attributes:
        num_train_timesteps: ``T``.
        dynamic: the shift comes from ``mu`` at ``init`` (``use_dynamic_shifting``).
        time_shift_type: ``"exponential"`` or ``"linear"`` (how ``mu`` shifts).
        shift_terminal: stretch the shifted sigmas to end here (``None``: no stretch).
        spacing: ``None``, ``"karras"``, ``"exponential"`` or ``"beta"`` (respaces the shifted
            sigmas between their ends).
        invert_sigmas: the run walks ``1 - s`` (toward noise) and ends at sigma 1.
    """

    num_train_timesteps: int
    dynamic: bool
    time_shift_type: str
    shift_terminal: float | None
    spacing: str | None
    invert_sigmas: bool


def _as_array(name: str, values, xp):
    """A 1-D array of custom ``sigmas`` / ``timesteps``."""
    if isinstance(values, jax.core.Tracer):
        values = jnp.asarray(values, jnp.float32)
    else:
        try:
            values = np.asarray(values).astype(np.float32)
        except (TypeError, ValueError) as err:
            raise OptionTypeError(f"{name} must be a 1-D array of floats: {err}") from err
    if values.ndim != 1 or values.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {values.shape}")
    return xp.asarray(values) if xp is jnp else values


def _spaced(spacing: str | None, sigmas, n: int, xp):
    """The shifted sigmas respaced between their own ends (diffusers' ``_convert_to_*``)."""
    if spacing is None:
        return sigmas
    lo, hi = sigmas[-1], sigmas[0]
    if xp is np:
        lo, hi = float(lo), float(hi)  # diffusers' .item(): float64 from here
    make = {"karras": karras_sigmas, "exponential": exponential_sigmas, "beta": beta_sigmas}
    return make[spacing](lo, hi, n, xp)


def _stretched(sigmas, terminal: float, xp):
    """``sigmas`` stretched to end at ``terminal``; a concrete last sigma of 1 (one step, or
    a grid ending at 1) is refused, since the stretch divides by ``1 - s_last``."""
    if xp is np and sigmas[-1] == 1:
        raise ValueError(
            f"shift_terminal={terminal} stretches the grid by 1 - s_last, which is 0 here (one "
            "step, or a last sigma of 1): diffusers returns NaN; use more steps"
        )
    return stretch_to_terminal(sigmas, terminal)


def flow_match_sigmas(
    options: FlowGridOptions,
    schedule: FlowSchedule,
    num_inference_steps: int | None,
    *,
    sigmas=None,
    timesteps=None,
    mu=None,
):
    """``(sigmas (N,), timesteps (N,))`` of ``set_timesteps``, before the final sigma: the
    timesteps spaced between the training ends (or custom timesteps / sigmas), shifted (by
    ``shift`` or by ``mu``), stretched to ``shift_terminal``, respaced; timesteps are
    ``s T`` unless given."""
    t_count = options.num_train_timesteps
    xp = array_module(schedule.sigmas, schedule.shift, mu, sigmas, timesteps)
    train = schedule.sigmas if xp is jnp else np.asarray(schedule.sigmas)
    given_t = None if timesteps is None else _as_array("timesteps", timesteps, xp)
    if sigmas is not None:
        s = _as_array("sigmas", sigmas, xp)
    elif given_t is not None:
        s = given_t / t_count
    else:
        hi, lo = train[0], train[-1]
        if xp is np:  # diffusers' sigma_max.item() * T: float64 from here
            hi, lo = float(hi), float(lo)
        s = xp.linspace(hi * t_count, lo * t_count, num_inference_steps) / t_count
    n = s.shape[0]
    if options.dynamic:
        s = time_shift(s, mu, options.time_shift_type)
    else:  # diffusers shifts again the sigmas spaced between the shifted training ends
        s = shift_sigmas(s, float(schedule.shift) if xp is np else schedule.shift)
    if options.shift_terminal:
        s = _stretched(s, options.shift_terminal, xp)
    s = _spaced(options.spacing, s, n, xp)
    s = s.astype(np.float32) if xp is np else jnp.asarray(s, jnp.float32)
    ts = s * np.float32(t_count) if given_t is None else given_t
    return s, ts


def flow_match_grid(
    options: FlowGridOptions,
    schedule: FlowSchedule,
    num_inference_steps: int | None,
    *,
    sigmas=None,
    timesteps=None,
    mu=None,
    inverse: bool = False,
) -> Grid:
    """diffusers' flow-matching grid: ``N`` steps over the sigmas of
    :func:`flow_match_sigmas` then 0 (with ``invert_sigmas``: over ``1 - s`` then 1, the
    model called at ``(1 - s) T``). ``inverse`` walks the same levels toward noise, from 0,
    calling the model at the start of each step (explicit Euler in the other direction)."""
    s, ts = flow_match_sigmas(
        options, schedule, num_inference_steps, sigmas=sigmas, timesteps=timesteps, mu=mu
    )
    xp = jnp if isinstance(s, jax.core.Tracer) else np
    if options.invert_sigmas:
        s = 1.0 - s
        ts = s * np.float32(options.num_train_timesteps)
        levels = xp.concatenate([s, xp.ones(1, s.dtype)])
    else:
        levels = xp.concatenate([s, xp.zeros(1, s.dtype)])
    if inverse:
        levels = levels[::-1]
        ts = levels[:-1] * np.float32(options.num_train_timesteps)
    ascending = inverse != options.invert_sigmas
    check_sigma_grid(
        levels, ascending=ascending, zero_first=ascending, zero_last=not ascending, sigma_max=1.0
    )
    dtype = default_float_dtype()  # float32 values (diffusers'), float64 tables with x64
    return chained(jnp.asarray(ts, jnp.float32), flow_levels(jnp.asarray(levels, dtype)))


def flow_heun_grid(options: FlowGridOptions, schedule: FlowSchedule, num_inference_steps: int):
    """diffusers' ``FlowMatchHeunDiscreteScheduler`` grid: one row per model call. The ``N``
    sigmas of :func:`flow_match_sigmas` and 0 become ``s0, s1, s1, ..., s_{N-1}, s_{N-1}, 0``;
    call ``k`` is at ``sigmas[k] T`` (``2N - 1`` calls: a predictor and a corrector per step,
    the last step a lone predictor to 0) and its row joins ``sigmas[k]`` and ``sigmas[k + 1]``
    (a corrector row has zero length; the solver reads its step from the row before)."""
    s, _ = flow_match_sigmas(options, schedule, num_inference_steps)
    xp = jnp if isinstance(s, jax.core.Tracer) else np
    full = xp.concatenate([s[:1], xp.repeat(s[1:], 2), xp.zeros(1, s.dtype)])
    ts = full[:-1] * np.float32(options.num_train_timesteps)
    dtype = default_float_dtype()
    return chained(jnp.asarray(ts, jnp.float32), flow_levels(jnp.asarray(full, dtype)))


def multistep_flow_sigmas(
    num_train_timesteps: int,
    num_inference_steps: int | None,
    *,
    sigmas=None,
    shift: float = 1.0,
    mu=None,
    time_shift_type: str = "exponential",
    shift_terminal: float | None = None,
) -> np.ndarray:
    """``(N,)`` float64 flow sigmas of diffusers' UniPC with ``use_flow_sigmas``: the given
    ``sigmas`` or ``linspace(1, 1 / T, N + 1)[:-1]``, shifted (by ``mu`` when given, else by
    ``shift``), stretched to ``shift_terminal``, and a first sigma within 1e-6 of 1 moved to
    ``1 - 1e-6`` (where ``lambda`` is finite). Concrete values only."""
    if sigmas is not None:
        _as_array("sigmas", sigmas, np)  # checks: a non-empty 1-D array of floats
        s = np.asarray(sigmas, np.float64)
    else:
        s = np.linspace(1.0, 1.0 / num_train_timesteps, num_inference_steps + 1)[:-1]
    s = time_shift(s, mu, time_shift_type) if mu is not None else shift_sigmas(s, shift)
    if shift_terminal:
        s = _stretched(s, shift_terminal, np)
    s = np.array(s, np.float64)
    if abs(s[0] - 1.0) < FIRST_SIGMA_OFFSET:
        s[0] -= FIRST_SIGMA_OFFSET
    return s
