"""Step grids over a variance-preserving training schedule, as pure functions of the options
that shape them: DDIM's timestep grid, the multistep solvers' sigma grids (forward and
inverse, every spacing, custom grids) and the clamps they apply to the training levels.

Each returns a :class:`~jaxsched.grids.levels.Grid`. Grids over a concrete schedule are built
in float64 NumPy, exactly as diffusers builds them; over a traced schedule (a ``vmap`` over
schedules) the same formulas run in ``jax.numpy``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched._checks import concrete_value
from jaxsched.grids.levels import Grid, abar_levels, chained, flow_levels, vp_levels
from jaxsched.grids.sigmas import (
    array_module,
    beta_sigmas,
    check_sigma_grid,
    continuous_timesteps,
    exponential_sigmas,
    flow_sigmas,
    karras_sigmas,
    sigma_to_t,
)
from jaxsched.grids.timesteps import (
    ddim_grid,
    dpm_timesteps,
    inverse_dpm_timesteps,
    levels_at,
)
from jaxsched.schedules import NoiseSchedule

# diffusers' DPM-Solver clamps a zero terminal alphas_cumprod to this value.
ZERO_SNR_ALPHA_CUMPROD = 2.0**-24


# -- DDIM ----------------------------------------------------------------------------------------


def ddim_spaced_grid(
    alphas_cumprod: jax.Array,
    num_inference_steps: int,
    *,
    spacing: str,
    steps_offset: int,
    boundary_alpha,
    inverse: bool,
) -> Grid:
    """The grid of ``DDIMScheduler`` (``inverse=False``) or ``DDIMInverseScheduler``
    (:func:`~jaxsched.grids.timesteps.ddim_grid`): each step joins the training levels of its
    two indexes, ``boundary_alpha`` beyond the table."""
    steps = ddim_grid(
        spacing, num_inference_steps, alphas_cumprod.shape[0], steps_offset, inverse=inverse
    )
    return Grid(
        timesteps=jnp.asarray(steps.timesteps, jnp.int32),
        start=abar_levels(levels_at(alphas_cumprod, steps.index_from, boundary_alpha)),
        end=abar_levels(levels_at(alphas_cumprod, steps.index_to, boundary_alpha)),
    )


def ddim_custom_grid(alphas_cumprod: jax.Array, sigmas, *, ascending: bool) -> Grid:
    """A run over the ``(N + 1,)`` grid ``sigmas = sqrt((1 - a) / a)``: step ``i`` joins the
    levels of ``sigmas[i]`` and ``sigmas[i + 1]`` and calls the model at the continuous timestep
    of the noisier one (the forward step's start; the inverse step's destination, as diffusers'
    inverse does). 0 is allowed at the clean end."""
    check_sigma_grid(
        sigmas,
        ascending=ascending,
        zero_first=ascending,
        zero_last=not ascending,
        sigma_max=jnp.sqrt((1.0 - alphas_cumprod[-1]) / alphas_cumprod[-1]),
    )
    sigmas = jnp.asarray(sigmas, alphas_cumprod.dtype)
    noisier = sigmas[1:] if ascending else sigmas[:-1]
    levels = abar_levels(1.0 / (1.0 + sigmas**2))
    return chained(continuous_timesteps(noisier, alphas_cumprod), levels)


# -- multistep sigma grids -----------------------------------------------------------------------


class SigmaGridOptions(NamedTuple):
    """The static options that shape a multistep sigma grid.

    Attributes:
        num_train_timesteps: ``T``.
        timestep_spacing: ``leading``, ``trailing`` or ``linspace`` (the default grid).
        steps_offset: added to ``leading`` timesteps.
        spacing: the sigma spacing, ``None`` (timesteps first), ``karras``, ``lu``,
            ``exponential``, ``beta`` or ``flow``.
        flow_shift: the flow shift of ``flow`` sigmas (``mu`` replaces it at ``init``).
        final_sigma: where a forward grid ends: ``"zero"``, ``"sigma_min"`` (the smallest
            training sigma) or ``"last"`` (a sigma spacing's last sigma, repeated: UniPC).
        spaced_end: how a sigma spacing ends: ``"final"`` (``N`` points, then ``final_sigma``),
            ``"repeat"`` (``N`` points, the last repeated: a zero-length last step) or
            ``"extend"`` (``N + 1`` points, the model called at the first ``N``).
        lambda_min_clipped: the default grid stops at the noisiest timestep whose lambda is at
            least this.
        round_karras: round the timesteps of karras and lu sigmas (diffusers does, but for the
            cosine schedule in DPM-Solver).
        zero_snr: the schedule was rescaled to zero terminal SNR.
        sigma_min, sigma_max: the ends of karras / exponential / beta sigmas (``None``: the
            training schedule's; UniPC's ``sigma_min`` / ``sigma_max``).
    """

    num_train_timesteps: int
    timestep_spacing: str
    steps_offset: int
    spacing: str | None
    flow_shift: float
    final_sigma: str
    spaced_end: str
    lambda_min_clipped: float
    round_karras: bool
    zero_snr: bool
    sigma_min: float | None = None
    sigma_max: float | None = None


def clamp_zero_levels(schedule: NoiseSchedule, zero_snr: bool) -> NoiseSchedule:
    """The schedule with every zero level clamped to ``2**-24``, as diffusers clamps a zero
    terminal SNR. Levels that underflow to 0 (``beta_end`` near 1) are clamped too, to the
    smallest positive level where that is below ``2**-24`` (the levels stay ordered): a zero
    ``alphas_cumprod`` has an infinite sigma, where the solvers' ``lambda`` is undefined."""
    abar = schedule.alphas_cumprod
    if zero_snr:
        abar = abar.at[-1].set(ZERO_SNR_ALPHA_CUMPROD)
    floor = jnp.minimum(jnp.min(jnp.where(abar > 0, abar, 1.0)), ZERO_SNR_ALPHA_CUMPROD)
    return schedule._replace(alphas_cumprod=jnp.where(abar > 0, abar, floor))


class TrainingSigmas(NamedTuple):
    """The training levels in the forms grids need, ``(T,)`` each, in the array module ``xp``
    (NumPy when the schedule and shift are concrete)."""

    xp: object
    sigmas: jax.Array
    log_sigmas: jax.Array
    lambdas: jax.Array


def training_sigmas(alphas_cumprod, spacing: str | None, flow_shift) -> TrainingSigmas:
    """:class:`TrainingSigmas` of a schedule; raises when a sigma spacing has a zero sigma."""
    xp = array_module(alphas_cumprod, flow_shift if spacing == "flow" else None)
    abar = np.asarray(alphas_cumprod) if xp is np else alphas_cumprod
    sigmas = ((1 - abar) / abar) ** 0.5
    if xp is np and spacing not in (None, "flow") and sigmas[0] <= 0:
        raise ValueError(
            "karras / lu / exponential / beta sigmas need a smallest sigma > 0; the schedule "
            "has alphas_cumprod[0] = 1 (beta_start = 0)"
        )
    with np.errstate(divide="ignore"):  # a zero sigma (beta_start = 0) has log -inf
        lambdas = xp.log(xp.sqrt(abar)) - xp.log(xp.sqrt(1 - abar))
        return TrainingSigmas(xp, sigmas, xp.log(sigmas), lambdas)


def _last_timestep(options: SigmaGridOptions, train: TrainingSigmas) -> int:
    """One past the noisiest timestep whose lambda is >= ``lambda_min_clipped``."""
    if options.lambda_min_clipped == -math.inf:
        return options.num_train_timesteps
    clipped = concrete_value(train.xp.searchsorted(train.lambdas[::-1], options.lambda_min_clipped))
    if clipped is None:
        raise ValueError(
            "a finite lambda_min_clipped needs a concrete noise schedule (its clipped "
            "timestep fixes the grid); build the schedule outside jit/vmap"
        )
    return options.num_train_timesteps - int(clipped)


def _sigma_ends(values, xp):
    """First and last of ``values``; Python floats for NumPy grids, since diffusers computes
    its sigma spacings in float64 from them."""
    lo, hi = values[0], values[-1]
    return (float(lo), float(hi)) if xp is np else (lo, hi)


def _spaced_sigmas(
    options: SigmaGridOptions, train: TrainingSigmas, points: int, flow_shift, *, ascending: bool
):
    """``(sigmas, ts)``, ``(points,)`` each: the sigma spacing, descending (or ascending, as
    diffusers' inverse schedulers build it), and the continuous training timestep of each."""
    xp, spacing = train.xp, options.spacing
    if spacing == "flow":
        sigmas = flow_sigmas(points, options.num_train_timesteps, flow_shift, xp)
        sigmas = sigmas[::-1] if ascending else sigmas
        return sigmas, sigmas * options.num_train_timesteps
    lo, hi = _sigma_ends(train.sigmas, xp)
    lo = lo if options.sigma_min is None else options.sigma_min
    hi = hi if options.sigma_max is None else options.sigma_max
    if spacing == "lu":
        sigmas = xp.exp(xp.linspace(*_sigma_ends(train.log_sigmas, xp)[::-1], points))
    elif spacing == "beta" and ascending and xp is jnp:
        # diffusers' hi + q (lo - hi) cancels at the small end in float32; Beta(0.6, 0.6) is
        # symmetric, so the reversed forward grid is the same grid without cancellation.
        sigmas = beta_sigmas(lo, hi, points, xp)[::-1]
    else:
        make = {"karras": karras_sigmas, "exponential": exponential_sigmas}.get(
            spacing, beta_sigmas
        )
        # diffusers' inverse schedulers pass the ends swapped, which reverses the spacing.
        sigmas = make(hi, lo, points, xp) if ascending else make(lo, hi, points, xp)
    ts = sigma_to_t(sigmas, train.log_sigmas, xp)
    if spacing in ("karras", "lu") and options.round_karras:
        ts = xp.round(ts)
    return sigmas, ts


def _sigmas_at(options: SigmaGridOptions, ts: np.ndarray, train: TrainingSigmas):
    """The training sigma at each integer timestep, after checking they are in range."""
    if len(ts) == 0 or ts.min() < 0 or ts.max() >= options.num_train_timesteps:
        raise ValueError(
            f"timesteps must be non-empty and lie in 0..{options.num_train_timesteps - 1} "
            f"(check steps_offset or custom timesteps), got {ts.tolist()[:8]}..."
        )
    xp = train.xp
    return xp.interp(xp.asarray(ts, train.sigmas.dtype), xp.arange(len(train.sigmas)), train.sigmas)


def _finish(options: SigmaGridOptions, ts, sigmas, xp, table_dtype) -> Grid:
    """The grid of integer timesteps (truncated, as diffusers casts them) over the ``(N + 1,)``
    sigmas, in the tables' dtype."""
    if xp is np:
        ts, sigmas = np.asarray(ts).astype(np.int32), np.asarray(sigmas, table_dtype)
    sigmas = jnp.asarray(sigmas, table_dtype)
    levels = flow_levels(sigmas) if options.spacing == "flow" else vp_levels(sigmas)
    return chained(jnp.asarray(ts).astype(jnp.int32), levels)


def _spaced_grid(
    options: SigmaGridOptions, train: TrainingSigmas, n: int, flow_shift, dtype, *, ascending
) -> Grid:
    """A sigma spacing ending as ``options.spaced_end`` says (``repeat`` or ``extend``)."""
    xp = train.xp
    if options.spaced_end == "repeat":
        sigmas, ts = _spaced_sigmas(options, train, n, flow_shift, ascending=ascending)
        return _finish(options, ts, xp.concatenate([sigmas, sigmas[-1:]]), xp, dtype)
    sigmas, ts = _spaced_sigmas(options, train, n + 1, flow_shift, ascending=ascending)
    return _finish(options, ts[:n], sigmas, xp, dtype)


def forward_sigma_grid(
    options: SigmaGridOptions,
    schedule: NoiseSchedule,
    num_inference_steps: int | None,
    timesteps: np.ndarray | None,
    flow_shift,
) -> Grid:
    """A descending grid as diffusers' ``set_timesteps`` builds it: a sigma spacing of ``N``
    points then the final sigma (or ending as ``spaced_end`` says), or the spaced (or custom)
    integer timesteps below the lambda clip, their training sigmas, then the final sigma (0
    or the smallest training sigma)."""
    train = training_sigmas(schedule.alphas_cumprod, options.spacing, flow_shift)
    xp, n, dtype = train.xp, num_inference_steps, schedule.alphas_cumprod.dtype
    if options.spacing is not None:
        if options.spaced_end != "final":
            return _spaced_grid(options, train, n, flow_shift, dtype, ascending=False)
        sigmas, ts = _spaced_sigmas(options, train, n, flow_shift, ascending=False)
    else:
        if timesteps is None:
            timesteps = dpm_timesteps(
                options.timestep_spacing,
                n,
                _last_timestep(options, train),
                options.num_train_timesteps,
                options.steps_offset,
            )
        ts = np.asarray(timesteps).astype(np.int64)
        sigmas = _sigmas_at(options, ts, train)
    if options.final_sigma == "last":  # the spacing's last sigma repeated
        final = sigmas[-1]
    else:
        final = train.sigmas[0] if options.final_sigma == "sigma_min" else 0.0
    sigmas = xp.concatenate([sigmas, xp.asarray([final], sigmas.dtype)])
    return _finish(options, ts, sigmas, xp, dtype)


def inverse_sigma_grid(
    options: SigmaGridOptions, schedule: NoiseSchedule, num_inference_steps: int, flow_shift
) -> Grid:
    """An ascending grid as diffusers' inverse builds it: sigma spacings end as ``spaced_end``
    says; the default grid ends at the noisiest unclipped timestep."""
    train = training_sigmas(schedule.alphas_cumprod, options.spacing, flow_shift)
    xp, n, dtype = train.xp, num_inference_steps, schedule.alphas_cumprod.dtype
    if options.spacing is not None:
        return _spaced_grid(options, train, n, flow_shift, dtype, ascending=True)
    noisiest = _last_timestep(options, train) - 1
    ts = inverse_dpm_timesteps(
        options.timestep_spacing, n, noisiest, options.num_train_timesteps, options.steps_offset
    )
    sigmas = _sigmas_at(options, ts, train)
    sigmas = xp.concatenate([sigmas, train.sigmas[noisiest : noisiest + 1]])
    return _finish(options, ts, sigmas, xp, dtype)


def custom_sigma_grid(
    options: SigmaGridOptions,
    schedule: NoiseSchedule,
    sigmas,
    *,
    ascending: bool,
    zero_last: bool,
) -> Grid:
    """A given ``(N + 1,)`` grid (may be traced): the model is called at the continuous
    training timestep of each of the first ``N`` sigmas (``sigma * T`` for flow sigmas).
    Forward grids descend and may end at 0 where ``zero_last``; inverse grids ascend from a
    positive sigma."""
    abar = schedule.alphas_cumprod
    flow = options.spacing == "flow"
    check_sigma_grid(
        sigmas,
        ascending=ascending,
        zero_first=False,
        zero_last=zero_last,
        sigma_max=1.0 if flow else jnp.sqrt((1.0 - abar[-1]) / abar[-1]),
    )
    sigmas = jnp.asarray(sigmas, abar.dtype)
    n = sigmas.shape[0] - 1
    if flow:
        return chained(sigmas[:n] * options.num_train_timesteps, flow_levels(sigmas))
    return chained(continuous_timesteps(sigmas[:n], abar), vp_levels(sigmas))
