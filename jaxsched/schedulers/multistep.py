"""What the multistep schedulers (DPM-Solver and DEIS, forward and inverse) share: their common
options, diffusers' sigma grids, a pure ``init`` that folds every step into tables, and a step
that gathers one row and does one fused multiply-add."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxsched._checks import check_bool, check_choice, check_float, check_int, concrete_value
from jaxsched.grids import (
    TIMESTEP_SPACINGS,
    array_module,
    beta_sigmas,
    check_custom_timesteps,
    check_sigma_grid,
    continuous_timesteps,
    dpm_timesteps,
    exponential_sigmas,
    flow_shift_of_mu,
    flow_sigmas,
    inverse_dpm_timesteps,
    karras_sigmas,
    sigma_to_t,
)
from jaxsched.schedulers.base import (
    Scheduler,
    advance,
    check_begin_index,
    check_built_state,
    check_init_dtype,
    check_init_shape,
    check_state,
    check_step_inputs,
    current_row,
    resolve_noise,
)
from jaxsched.schedules import (
    NoiseSchedule,
    check_noising_inputs,
    check_timesteps_type,
    compute_dtype,
    noised,
)
from jaxsched.solvers.multistep import MultistepCoefficients, effective_order, multistep_update
from jaxsched.solvers.prediction import data_and_noise, dynamic_threshold, noise_from_data
from jaxsched.state import Origin, SchedulerState

MULTISTEP_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")
# diffusers' DPM-Solver clamps a zero terminal alphas_cumprod to this value.
ZERO_SNR_ALPHA_CUMPROD = 2.0**-24
# Below this many steps, lower_order_final also lowers the last two steps (diffusers).
LOWER_ORDER_FINAL_BELOW = 15


def sigma_spacing(sched) -> str | None:
    """The sigma spacing diffusers applies, in its order of precedence."""
    for flag, name in (
        ("use_karras_sigmas", "karras"),
        ("use_lu_lambdas", "lu"),
        ("use_exponential_sigmas", "exponential"),
        ("use_beta_sigmas", "beta"),
        ("use_flow_sigmas", "flow"),
    ):
        if getattr(sched, flag):
            return name
    return None


def step_orders(
    solver_order: int,
    num_steps: int,
    *,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigmas_type: str,
    begin_index: int = 0,
) -> np.ndarray:
    """The order diffusers uses at each step, ``(N,)``: warm-up from the step the run begins at
    (step ``i`` has at most ``i - begin_index + 1``; steps before it never run), then
    ``euler_at_final`` / ``lower_order_final`` / a zero final sigma lower the last step to 1,
    and ``lower_order_final`` below 15 steps the second-to-last to 2 (both counted over all
    ``N`` steps, as diffusers counts them)."""
    short = lower_order_final and num_steps < LOWER_ORDER_FINAL_BELOW
    orders = np.clip(np.arange(num_steps) - begin_index + 1, 1, solver_order)
    if num_steps >= 2 and short:
        orders[-2] = min(orders[-2], 2)
    if euler_at_final or short or final_sigmas_type == "zero":
        orders[-1] = 1
    return orders.astype(np.int32)


def lookup_timesteps(grid: jax.Array, timesteps) -> jax.Array:
    """The position of each of ``timesteps`` ``(B,)`` (or a scalar) in ``grid`` ``(N,)`` as
    diffusers' ``index_for_timestep`` finds it: the second match when a timestep repeats, the
    last step when it is missing. A comparison, not a search, so it is jittable."""
    matches = jnp.reshape(jnp.asarray(timesteps), (-1, 1)) == grid[None, :]
    first = jnp.argmax(matches, axis=1)
    second = jnp.argmax(matches.at[jnp.arange(matches.shape[0]), first].set(False), axis=1)
    count = jnp.sum(matches, axis=1)
    return jnp.where(count == 0, grid.shape[0] - 1, jnp.where(count > 1, second, first))


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultistepScheduler(Scheduler):
    """Options, grids, init and step shared by the multistep schedulers.

    All per-step work is done at ``init``: the sigma grid (``sigma_grid``, per class), every
    step's update weights (``coefficients``, per family) and the order used at each step.
    A step converts the model output (``convert_model_output``, per family), gathers one row
    and does one fused multiply-add over ``(x, m0, m1, m2, z)``.
    """

    solver_order: int = 2
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    lower_order_final: bool = True
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    use_flow_sigmas: bool = False
    flow_shift: float = 1.0
    timestep_spacing: str = "linspace"
    steps_offset: int = 0

    # diffusers options only some multistep classes have; those override them with fields.
    algorithm_type: ClassVar[str]
    euler_at_final: ClassVar[bool] = False
    lambda_min_clipped: ClassVar[float] = -math.inf
    use_lu_lambdas: ClassVar[bool] = False
    final_sigmas_type: ClassVar[str] = "sigma_min"
    use_dynamic_shifting: ClassVar[bool] = False
    #: Whether sigma spacings end by repeating their last sigma (a zero-length last step).
    repeat_final_sigma: ClassVar[bool] = True
    #: Whether a forward grid may end at sigma = 0 (the noise-form DPM-Solver may not).
    ends_at_zero_sigma_ok: ClassVar[bool] = True
    #: Four steps per scan iteration: XLA then rotates the history buffers through the unrolled
    #: body instead of copying each one every step (measured about 2x on CPU).
    scan_unroll: ClassVar[int] = 4

    def _validate(self) -> None:
        super()._validate()
        check_int("solver_order", self.solver_order)
        check_choice("solver_order", self.solver_order, (1, 2, 3))
        check_choice("prediction_type", self.prediction_type, MULTISTEP_PREDICTION_TYPES)
        check_bool("thresholding", self.thresholding)
        check_float("dynamic_thresholding_ratio", self.dynamic_thresholding_ratio, low=0, high=1)
        check_float("sample_max_value", self.sample_max_value, low=0.0, low_open=True)
        for flag in (
            "lower_order_final",
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "use_flow_sigmas",
        ):
            check_bool(flag, getattr(self, flag))
        if self.use_karras_sigmas + self.use_exponential_sigmas + self.use_beta_sigmas > 1:
            raise ValueError(
                "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas can be on"
            )
        others = [
            f
            for f in (
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_lu_lambdas",
            )
            if getattr(self, f)
        ]
        if self.use_flow_sigmas and others:
            raise ValueError(f"use_flow_sigmas cannot be combined with {others}")
        check_float("flow_shift", self.flow_shift, low=0.0, low_open=True)
        check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        check_int("steps_offset", self.steps_offset, minimum=0)

    # -- grids --------------------------------------------------------------------------------

    def _schedule_for_grid(self, schedule: NoiseSchedule | None) -> NoiseSchedule:
        """The run's schedule with every zero level clamped to ``2**-24``, as diffusers clamps a
        zero terminal SNR (``rescale_betas_zero_snr``). Levels that underflow to 0 (``beta_end``
        near 1) are clamped too, to the smallest positive level where that is below ``2**-24``
        (the levels stay ordered): a zero ``alphas_cumprod`` has an infinite sigma, where the
        solver's ``lambda`` is undefined."""
        if schedule is None:
            with jax.ensure_compile_time_eval():
                schedule = self.noise_schedule()
        else:
            schedule = self.noise_schedule(schedule)
        abar = schedule.alphas_cumprod
        if self.rescale_betas_zero_snr:
            abar = abar.at[-1].set(ZERO_SNR_ALPHA_CUMPROD)
        floor = jnp.minimum(jnp.min(jnp.where(abar > 0, abar, 1.0)), ZERO_SNR_ALPHA_CUMPROD)
        return schedule._replace(alphas_cumprod=jnp.where(abar > 0, abar, floor))

    def _check_timestep_range(self, timesteps: np.ndarray) -> None:
        """Integer timesteps must index a training level (diffusers fails mid-run otherwise)."""
        if (
            len(timesteps) == 0
            or timesteps.min() < 0
            or timesteps.max() >= self.num_train_timesteps
        ):
            raise ValueError(
                f"timesteps must be non-empty and lie in 0..{self.num_train_timesteps - 1} "
                f"(check steps_offset or custom timesteps), got {timesteps.tolist()[:8]}..."
            )

    def _last_timestep(self, lambdas, xp) -> int:
        """One past the noisiest timestep whose lambda is >= ``lambda_min_clipped``."""
        if self.lambda_min_clipped == -math.inf:
            return self.num_train_timesteps
        clipped = xp.searchsorted(lambdas[::-1], self.lambda_min_clipped)
        value = concrete_value(clipped)
        if value is None:
            raise ValueError(
                "a finite lambda_min_clipped needs a concrete noise schedule (its clipped "
                "timestep fixes the grid); build the schedule outside jit/vmap"
            )
        return self.num_train_timesteps - int(value)

    def _training_sigmas(self, schedule: NoiseSchedule, flow_shift):
        """``(xp, abar, sigmas, log_sigmas, lambdas)`` of the training timesteps, ``(T,)`` each,
        in NumPy when the schedule (and shift) are concrete, else in ``jax.numpy``."""
        shift = flow_shift if sigma_spacing(self) == "flow" else None
        xp = array_module(schedule.alphas_cumprod, shift)
        abar = np.asarray(schedule.alphas_cumprod) if xp is np else schedule.alphas_cumprod
        sigmas = ((1 - abar) / abar) ** 0.5
        if xp is np and sigma_spacing(self) not in (None, "flow") and sigmas[0] <= 0:
            raise ValueError(
                "karras / lu / exponential / beta sigmas need a smallest sigma > 0; the schedule "
                "has alphas_cumprod[0] = 1 (beta_start = 0)"
            )
        with np.errstate(divide="ignore"):  # a zero sigma (beta_start = 0) has log -inf
            lambdas = xp.log(xp.sqrt(abar)) - xp.log(xp.sqrt(1 - abar))
            return xp, abar, sigmas, xp.log(sigmas), lambdas

    @staticmethod
    def _finish_grid(ts, sigmas, xp, table_dtype) -> tuple[jax.Array, jax.Array]:
        """Integer timesteps (truncated, as diffusers casts them) and the sigmas in the tables'
        dtype, as JAX arrays."""
        if xp is np:
            return jnp.asarray(np.asarray(ts).astype(np.int32)), jnp.asarray(
                np.asarray(sigmas, table_dtype)
            )
        return jnp.asarray(ts).astype(jnp.int32), jnp.asarray(sigmas, table_dtype)

    @staticmethod
    def _sigma_ends(train_sigmas, xp):
        """Smallest and largest training sigma; Python floats for NumPy grids, since diffusers
        computes its sigma spacings in float64 from them."""
        lo, hi = train_sigmas[0], train_sigmas[-1]
        return (float(lo), float(hi)) if xp is np else (lo, hi)

    def _spaced_sigmas(
        self,
        points: int,
        xp,
        train_sigmas,
        log_sigmas,
        flow_shift,
        *,
        ascending: bool,
        round_karras: bool = True,
    ):
        """``(sigmas, ts)``, ``(points,)`` each: the config's sigma spacing, descending (or
        ascending, as diffusers' inverse schedulers build it), and the continuous training
        timestep of each sigma (karras / lu ones rounded when ``round_karras``)."""
        spacing = sigma_spacing(self)
        if spacing == "flow":
            sigmas = flow_sigmas(points, self.num_train_timesteps, flow_shift, xp)
            sigmas = sigmas[::-1] if ascending else sigmas
            return sigmas, sigmas * self.num_train_timesteps
        lo, hi = self._sigma_ends(train_sigmas, xp)
        if spacing == "lu":
            sigmas = xp.exp(xp.linspace(*self._sigma_ends(log_sigmas, xp)[::-1], points))
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
        ts = sigma_to_t(sigmas, log_sigmas, xp)
        if spacing in ("karras", "lu") and round_karras:
            ts = xp.round(ts)
        return sigmas, ts

    def _descending_timesteps(self, n: int, timesteps, last_timestep: int) -> np.ndarray:
        """The custom ``timesteps`` (checked by :func:`check_custom_timesteps`), or diffusers'
        ``(n,)`` descending ones below ``last_timestep``."""
        if timesteps is not None:
            return np.asarray(timesteps).astype(np.int64)
        return dpm_timesteps(
            self.timestep_spacing, n, last_timestep, self.num_train_timesteps, self.steps_offset
        )

    def _sigmas_at(self, ts: np.ndarray, xp, train_sigmas):
        """The training sigma at each integer timestep, after checking they are in range."""
        self._check_timestep_range(ts)
        grid = xp.arange(len(train_sigmas))
        return xp.interp(xp.asarray(ts, train_sigmas.dtype), grid, train_sigmas)

    def _repeating_spacing_grid(
        self, n: int, xp, train_sigmas, log_sigmas, flow_shift, table_dtype, *, ascending: bool
    ) -> tuple[jax.Array, jax.Array]:
        """``(timesteps (n,) int, sigmas (n + 1,))`` of a sigma spacing as diffusers' DEIS and
        inverse schedulers end it: ``n`` points with the last sigma repeated, or (without
        ``repeat_final_sigma``) ``n + 1`` points with the model called at the first ``n``."""
        points = n if self.repeat_final_sigma else n + 1
        sigmas, ts = self._spaced_sigmas(
            points, xp, train_sigmas, log_sigmas, flow_shift, ascending=ascending
        )
        if self.repeat_final_sigma:
            return self._finish_grid(ts, xp.concatenate([sigmas, sigmas[-1:]]), xp, table_dtype)
        return self._finish_grid(ts[:n], sigmas, xp, table_dtype)

    def inverse_sigma_grid(
        self, schedule: NoiseSchedule, num_inference_steps, timesteps, flow_shift
    ):
        """``(timesteps (N,) int, sigmas (N + 1,))`` ascending, as diffusers' inverse builds
        them: sigma spacings end with their last sigma repeated (a zero-length last step,
        unless ``repeat_final_sigma=False``); the default grid ends at the noisiest unclipped
        timestep."""
        if timesteps is not None:
            raise ValueError(f"{type(self).__name__} takes no custom timesteps")
        xp, _, train_sigmas, log_sigmas, lambdas = self._training_sigmas(schedule, flow_shift)
        n = num_inference_steps
        table_dtype = schedule.alphas_cumprod.dtype
        if sigma_spacing(self) is not None:
            return self._repeating_spacing_grid(
                n, xp, train_sigmas, log_sigmas, flow_shift, table_dtype, ascending=True
            )
        noisiest = self._last_timestep(lambdas, xp) - 1
        ts = inverse_dpm_timesteps(
            self.timestep_spacing, n, noisiest, self.num_train_timesteps, self.steps_offset
        )
        sigmas = self._sigmas_at(ts, xp, train_sigmas)
        sigmas = xp.concatenate([sigmas, train_sigmas[noisiest : noisiest + 1]])
        return self._finish_grid(ts, sigmas, xp, table_dtype)

    def custom_sigma_grid(self, schedule: NoiseSchedule, sigmas, flow_shift):
        """``(timesteps (N,) float, sigmas (N + 1,))`` of a given grid: the model is called at
        the continuous training timestep of each of the first ``N`` sigmas (``sigma * T`` for
        flow sigmas). Forward grids descend and may end at 0 (see ``ends_at_zero_sigma_ok``);
        inverse grids ascend from a positive sigma."""
        zero_last = not self.walks_toward_noise and self.ends_at_zero_sigma_ok
        abar = schedule.alphas_cumprod
        check_sigma_grid(
            sigmas,
            ascending=self.walks_toward_noise,
            zero_first=False,
            zero_last=zero_last,
            sigma_max=1.0 if self.use_flow_sigmas else jnp.sqrt((1.0 - abar[-1]) / abar[-1]),
        )
        sigmas = jnp.asarray(sigmas, schedule.alphas_cumprod.dtype)
        n = sigmas.shape[0] - 1
        if self.use_flow_sigmas:
            return sigmas[:n] * self.num_train_timesteps, sigmas
        return continuous_timesteps(sigmas[:n], schedule.alphas_cumprod), sigmas

    def _levels(self, sigmas: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(alpha, sigma)`` of each grid sigma: VP ``1 / sqrt(1 + s^2)``, or flow ``1 - s``."""
        if self.use_flow_sigmas:
            return 1.0 - sigmas, sigmas
        alpha = 1.0 / jnp.sqrt(sigmas**2 + 1.0)
        return alpha, sigmas * alpha

    def _nodes_and_orders(
        self, coordinate: jax.Array, begin_index: int = 0
    ) -> tuple[tuple[jax.Array, ...], jax.Array]:
        """``((t, s0, s1, s2), order)`` of every step from the solver's grid coordinate
        (lambda or log rho, ``(N + 1,)``): each ``(N,)``; before the first step the history
        repeats ``s0``, and the order is lowered where history points coincide or are
        infinite, and during the warm-up from ``begin_index``."""
        n = coordinate.shape[0] - 1
        s0 = coordinate[:n]
        s1 = jnp.concatenate([s0[:1], s0[:-1]])
        s2 = jnp.concatenate([s1[:1], s1[:-1]])
        nodes = (coordinate[1:], s0, s1, s2)
        nominal = jnp.asarray(self._nominal_orders(n, begin_index))
        return nodes, effective_order(nominal, nodes)

    def _nominal_orders(self, num_steps: int, begin_index: int = 0) -> np.ndarray:
        """The order diffusers uses at each step before history checks, ``(N,)``."""
        return step_orders(
            self.solver_order,
            num_steps,
            lower_order_final=self.lower_order_final,
            euler_at_final=self.euler_at_final,
            final_sigmas_type=self.final_sigmas_type,
            begin_index=begin_index,
        )

    # -- init ---------------------------------------------------------------------------------

    def coefficients(self, sigmas: jax.Array, begin_index: int = 0) -> MultistepCoefficients:
        """Every step's tables from the ``(N + 1,)`` sigma grid, for a run that begins at step
        ``begin_index`` (per family)."""
        raise NotImplementedError

    def sigma_grid(self, schedule: NoiseSchedule, num_inference_steps, timesteps, flow_shift):
        """``(timesteps (N,) int, sigmas (N + 1,))`` of a run (per class)."""
        raise NotImplementedError

    def init(
        self,
        num_inference_steps: int | None,
        shape: tuple[int, ...],
        dtype=None,
        schedule: NoiseSchedule | None = None,
        *,
        timesteps=None,
        sigmas=None,
        mu=None,
        begin_index: int | None = None,
    ) -> SchedulerState:
        """The state of an ``N``-step run on samples of ``shape`` and ``dtype``.

        Args:
            num_inference_steps: ``N``; ``None`` when ``timesteps`` or ``sigmas`` are given.
            shape, dtype: of the samples (dtype defaults to float32, float64 with x64).
            schedule: replaces the config's betas (may be traced).
            timesteps: custom descending integer timesteps (not with a sigma spacing).
            sigmas: a custom ``(N + 1,)`` sigma grid (jaxsched extension; may be traced, e.g.
                a learned grid, :func:`jaxsched.learned_grid.learn_sigmas`): descending for
                sampling (its last value the final sigma, which may be 0), ascending for
                inversion. The model is then called at continuous timesteps (``state.timesteps``
                is floating point). With ``use_flow_sigmas`` the values are flow sigmas; other
                sigma spacings are rejected.
            mu: with ``use_dynamic_shifting``, the flow shift is ``exp(mu)`` (may be traced).
            begin_index: start the run at this step (img2img; diffusers' ``set_begin_index``):
                ``step_index`` starts there, the solver warms up from there (its first step is
                first order), ``lower_order_final`` still counts all ``N`` steps, and
                :meth:`add_noise` uses the current step's level.
        """
        given = {
            "num_inference_steps": num_inference_steps,
            "timesteps": timesteps,
            "sigmas": sigmas,
        }
        if sum(value is not None for value in given.values()) != 1:
            raise ValueError(f"pass exactly one of {', '.join(given)}")
        spacing = sigma_spacing(self)
        if spacing is not None and timesteps is not None:
            raise ValueError(f"custom timesteps cannot be used with {spacing} sigmas")
        if spacing not in (None, "flow") and sigmas is not None:
            raise ValueError(f"custom sigmas cannot be used with {spacing} sigmas")
        if timesteps is not None:
            timesteps = check_custom_timesteps(timesteps, self.num_train_timesteps)
            num_inference_steps = len(timesteps)
        elif num_inference_steps is not None:
            self.check_num_inference_steps(num_inference_steps)
        if mu is not None and sigmas is not None:
            raise ValueError("mu shifts the built-in flow grid; custom sigmas are used as given")
        if mu is not None and not self.use_dynamic_shifting:
            raise ValueError("mu is only used with use_dynamic_shifting=True")
        shape = check_init_shape(shape)
        dtype = check_init_dtype(dtype)
        schedule = self._schedule_for_grid(schedule)
        flow_shift = self.flow_shift if mu is None else flow_shift_of_mu(mu)
        if sigmas is None:
            ts, sigmas = self.sigma_grid(schedule, num_inference_steps, timesteps, flow_shift)
        else:
            ts, sigmas = self.custom_sigma_grid(schedule, sigmas, flow_shift)
        table_dtype = schedule.alphas_cumprod.dtype
        start = check_begin_index(begin_index, ts.shape[0])
        history = tuple(jnp.zeros(shape, dtype) for _ in range(self.solver_order - 1))
        state = SchedulerState(
            timesteps=ts,
            step_index=jnp.asarray(start, jnp.int32),
            coefficients=self.coefficients(sigmas, start),
            schedule=schedule,
            thresholds=self.thresholds(table_dtype),
            pred_original_sample=jnp.zeros(shape, dtype),
            history=history,
            origin=Origin(self),
            begin_index=None if begin_index is None else jnp.asarray(start, jnp.int32),
        )
        check_built_state(self, state, "" if mu is None else f", mu={mu!r}")
        return state

    # -- training-side helper -----------------------------------------------------------------

    def add_noise(self, state: SchedulerState, original_samples, noise, timesteps) -> jax.Array:
        """``alpha x0 + sigma noise`` at the grid level of each timestep, as diffusers' multistep
        ``add_noise`` does. Without a ``begin_index`` each of the ``(B,)`` (or scalar)
        ``timesteps`` is looked up in ``state.timesteps`` (:func:`lookup_timesteps`). A state
        built with ``init(begin_index=...)`` uses the level of its current step for every
        timestep (before the run: the begin index, img2img; during it: the step, inpainting).
        Computed in at least float32 and returned in the samples' dtype; jittable."""
        check_state(self, state)
        check_timesteps_type(timesteps)
        check_noising_inputs(original_samples, noise, timesteps)
        self._check_add_noise_range(timesteps)
        if state.begin_index is None:
            index = lookup_timesteps(state.timesteps, timesteps)
        else:
            index = jnp.broadcast_to(state.step_index, jnp.shape(jnp.ravel(timesteps)))
        alpha, sigma = state.coefficients.alpha[index], state.coefficients.sigma[index]
        if self.prediction_type == "flow_prediction":  # the tables hold (1 - s, s) of grid s
            alpha, sigma = self._levels(sigma)
        return noised(original_samples, noise, alpha, sigma, state.schedule.alphas_cumprod.dtype)

    def _check_add_noise_range(self, timesteps) -> None:
        """Timesteps must be training timesteps: ``0..T-1`` (``0..T`` for flow sigmas, whose
        timestep is ``sigma * T``); raises when concrete, a debug check when traced."""
        top = self.num_train_timesteps - (0 if self.use_flow_sigmas else 1)
        t = jnp.asarray(timesteps)
        known = concrete_value(timesteps)
        if known is None:
            checkify.debug_check(
                jnp.all((t >= 0) & (t <= top)), f"timesteps must lie in 0..{top}, got {{}}", t
            )
        elif not np.all((known >= 0) & (known <= top)):
            raise ValueError(f"timesteps must lie in 0..{top}, got {known.ravel().tolist()[:8]}")

    # -- step ---------------------------------------------------------------------------------

    def _data_and_noise(self, state: SchedulerState, model_output, x):
        """``(x0, eps, alpha, sigma)``: the predictions at the current level after thresholding
        (``eps`` then follows from the limited ``x0``), and that level's conversion scales."""
        alpha, sigma = current_row(
            (state.coefficients.alpha, state.coefficients.sigma), state.step_index
        )
        x0, eps = data_and_noise(self.prediction_type, model_output, x, alpha, sigma)
        if self.thresholding:
            t = state.thresholds
            x0 = dynamic_threshold(x0, t.dynamic_thresholding_ratio, t.sample_max_value)
            eps = noise_from_data(x, x0, alpha, sigma)
        return x0, eps, alpha, sigma

    def convert_model_output(self, state: SchedulerState, model_output, x):
        """``(target, x0)``: the model output as the solver's variable and the x0 prediction
        (per family)."""
        raise NotImplementedError

    def step(
        self,
        state: SchedulerState,
        model_output: jax.Array,
        t,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        noise: jax.Array | None = None,
    ) -> tuple[SchedulerState, jax.Array]:
        """One multistep step; ``key``/``noise`` drive the stochastic (SDE) variants."""
        check_step_inputs(self, state, model_output, t, x)
        dtype = compute_dtype(jnp.result_type(x), state.schedule.alphas_cumprod.dtype)
        noise = resolve_noise(
            self.algorithm_type.startswith("sde"), key, noise, jnp.shape(x), dtype
        )
        x_c = jnp.asarray(x).astype(dtype)
        target, x0 = self.convert_model_output(state, jnp.asarray(model_output).astype(dtype), x_c)
        history = tuple(m.astype(dtype) for m in state.history)
        weights = current_row(state.coefficients.weights, state.step_index)
        x_next = multistep_update(x_c, target, history, weights, noise)
        new_history = (target, *history[:-1])[: len(history)]
        new_history = tuple(
            m.astype(h.dtype) for m, h in zip(new_history, state.history, strict=True)
        )
        return advance(state, x0, history=new_history), x_next.astype(jnp.result_type(x))
