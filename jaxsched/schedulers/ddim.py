"""``DDIMScheduler`` and ``DDIMInverseScheduler``: diffusers' options, pure init and step."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched._checks import (
    OptionTypeError,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_scalar_in,
)
from jaxsched.grids import (
    TIMESTEP_SPACINGS,
    check_sigma_grid,
    continuous_timesteps,
    ddim_grid,
    levels_at,
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
from jaxsched.schedules import NoiseSchedule, add_noise, compute_dtype, get_velocity
from jaxsched.solvers.ddim import DDIMCoefficients, ddim_coefficients, ddim_update
from jaxsched.solvers.prediction import PREDICTION_TYPES
from jaxsched.state import Origin, SchedulerState


@dataclasses.dataclass(frozen=True, kw_only=True)
class _DDIMBase(Scheduler):
    """Options and init shared by the forward and inverse DDIM schedulers."""

    clip_sample: bool = True
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    clip_sample_range: float = 1.0
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False

    # The inverse class has no thresholding; the forward class overrides this with a field.
    thresholding: ClassVar[bool] = False

    def _validate(self) -> None:
        super()._validate()
        check_bool("clip_sample", self.clip_sample)
        check_bool("set_alpha_to_one", self.set_alpha_to_one)
        check_int("steps_offset", self.steps_offset, minimum=0)
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        check_float("clip_sample_range", self.clip_sample_range, low=0.0, low_open=True)
        check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)

    def init(
        self,
        num_inference_steps: int | None,
        shape: tuple[int, ...],
        dtype=None,
        schedule: NoiseSchedule | None = None,
        *,
        sigmas=None,
        begin_index: int | None = None,
    ) -> SchedulerState:
        """The state of an ``N``-step run on samples of ``shape`` and ``dtype``.

        ``dtype`` defaults to float32 (float64 with x64 enabled).
        ``schedule`` (a :func:`jaxsched.noise_schedule`) replaces the config's betas; it may be
        traced, so ``jax.vmap(lambda s: sched.init(N, shape, schedule=s))`` batches schedules.
        ``sigmas`` (instead of ``num_inference_steps``; a jaxsched extension) is a custom
        ``(N + 1,)`` grid of ``sigma = sqrt((1 - a) / a)``, descending for sampling and
        ascending for inversion, 0 allowed at the clean end (``a = 1``); see
        :meth:`custom_grid_tables`.
        ``begin_index`` starts the run at that step (img2img; diffusers' ``set_begin_index``
        followed by ``timesteps[begin_index:]``).
        """
        if num_inference_steps is not None and sigmas is not None:
            raise ValueError("pass exactly one of num_inference_steps and sigmas")
        if sigmas is None:
            self.check_num_inference_steps(num_inference_steps)
        shape = check_init_shape(shape)
        dtype = check_init_dtype(dtype)
        schedule = self.noise_schedule(schedule)
        if sigmas is None:
            timesteps, coefficients = self.spaced_grid_tables(schedule, num_inference_steps)
        else:
            timesteps, coefficients = self.custom_grid_tables(schedule, sigmas)
        start = check_begin_index(begin_index, timesteps.shape[0])
        state = SchedulerState(
            timesteps=timesteps,
            step_index=jnp.asarray(start, jnp.int32),
            coefficients=coefficients,
            schedule=schedule,
            thresholds=self.thresholds(schedule.alphas_cumprod.dtype),
            pred_original_sample=jnp.zeros(shape, dtype),
            origin=Origin(self),
            begin_index=None if begin_index is None else jnp.asarray(start, jnp.int32),
        )
        check_built_state(self, state)
        return state

    def spaced_grid_tables(
        self, schedule: NoiseSchedule, num_inference_steps: int
    ) -> tuple[jax.Array, DDIMCoefficients]:
        """``(timesteps (N,) int32, tables)`` of diffusers' grid for the config's spacing."""
        grid = ddim_grid(
            self.timestep_spacing,
            num_inference_steps,
            self.num_train_timesteps,
            self.steps_offset,
            inverse=self.walks_toward_noise,
        )
        abar = schedule.alphas_cumprod
        boundary = 1.0 if self.set_alpha_to_one else abar[0]
        coefficients = ddim_coefficients(
            levels_at(abar, grid.index_from, boundary), levels_at(abar, grid.index_to, boundary)
        )
        return jnp.asarray(grid.timesteps, jnp.int32), coefficients

    def custom_grid_tables(
        self, schedule: NoiseSchedule, sigmas
    ) -> tuple[jax.Array, DDIMCoefficients]:
        """``(timesteps (N,) float, tables)`` of a run over the ``(N + 1,)`` sigma grid
        ``sigmas``: step ``i`` joins the levels ``a = 1 / (1 + sigma^2)`` of ``sigmas[i]`` and
        ``sigmas[i + 1]``, calling the model at the continuous timestep of the noisier one (the
        forward step's start; the inverse step's destination, as diffusers' inverse does)."""
        abar = schedule.alphas_cumprod
        check_sigma_grid(
            sigmas,
            ascending=self.walks_toward_noise,
            zero_first=self.walks_toward_noise,
            zero_last=not self.walks_toward_noise,
            sigma_max=jnp.sqrt((1.0 - abar[-1]) / abar[-1]),
        )
        sigmas = jnp.asarray(sigmas, abar.dtype)
        levels = 1.0 / (1.0 + sigmas**2)
        noisier = sigmas[1:] if self.walks_toward_noise else sigmas[:-1]
        return continuous_timesteps(noisier, abar), ddim_coefficients(levels[:-1], levels[1:])

    def _ddim_step(self, state, model_output, x, *, eta, use_clipped_model_output, key, noise):
        """The update shared by both directions; ``eta=0.0`` (a Python zero) is deterministic."""
        dtype = compute_dtype(jnp.result_type(x), state.schedule.alphas_cumprod.dtype)
        eta_value = check_scalar_in("eta", eta, 0.0, 1.0)
        flag = use_clipped_model_output
        if not isinstance(flag, (bool, np.bool_)) and not (
            isinstance(flag, jax.Array) and flag.dtype == jnp.bool_ and flag.ndim == 0
        ):
            raise OptionTypeError(
                f"use_clipped_model_output must be a bool (or a traced bool), got {flag!r}"
            )
        stochastic = eta_value is None or eta_value > 0
        noise = resolve_noise(stochastic, key, noise, jnp.shape(x), dtype)
        x_next, x0 = ddim_update(
            jnp.asarray(x).astype(dtype),
            jnp.asarray(model_output).astype(dtype),
            current_row(state.coefficients, state.step_index),
            state.thresholds,
            prediction_type=self.prediction_type,
            clip_sample=self.clip_sample,
            thresholding=self.thresholding,
            eta=eta,
            use_clipped_model_output=use_clipped_model_output,
            noise=noise,
        )
        return advance(state, x0), x_next.astype(jnp.result_type(x))

    def add_noise(self, state: SchedulerState, original_samples, noise, timesteps) -> jax.Array:
        """:func:`jaxsched.schedules.add_noise` on the state's schedule."""
        check_state(self, state)
        return add_noise(state.schedule, original_samples, noise, timesteps)

    def get_velocity(self, state: SchedulerState, sample, noise, timesteps) -> jax.Array:
        """:func:`jaxsched.schedules.get_velocity` on the state's schedule."""
        check_state(self, state)
        return get_velocity(state.schedule, sample, noise, timesteps)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DDIMScheduler(_DDIMBase):
    """DDIM sampling (Song et al. 2021), diffusers' ``DDIMScheduler`` with its defaults.

    A step calls the model at ``t`` and moves from level ``t`` to ``t - T // N``; the last step
    ends at ``alphas_cumprod = 1`` (``set_alpha_to_one``) or ``alphas_cumprod[0]``.

    Example::

        sched = jaxsched.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                       beta_end=0.012, clip_sample=False)
        state = sched.init(50, shape=x.shape)
        state, x = sched.step(state, model(x, state.timesteps[0]), state.timesteps[0], x)
    """

    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0

    inverse_class_name: ClassVar[str] = "DDIMInverseScheduler"

    def _validate(self) -> None:
        super()._validate()
        check_bool("thresholding", self.thresholding)
        check_float("dynamic_thresholding_ratio", self.dynamic_thresholding_ratio, low=0, high=1)
        check_float("sample_max_value", self.sample_max_value, low=0.0, low_open=True)

    def step(
        self,
        state: SchedulerState,
        model_output: jax.Array,
        t,
        x: jax.Array,
        *,
        eta=0.0,
        use_clipped_model_output=False,
        key: jax.Array | None = None,
        noise: jax.Array | None = None,
    ) -> tuple[SchedulerState, jax.Array]:
        """One DDIM step: ``(state, x_t) -> (next state, x_{t - T//N})``.

        Args:
            state: from :meth:`init`; its ``step_index`` says which step this is.
            model_output: the model's output at ``(x, t)``, shaped like ``x``.
            t: ``state.timesteps[state.step_index]`` (checked when concrete).
            x: the current sample ``(batch, ...)``.
            eta: noise weight, 0 (DDIM) to 1 (DDPM); may be traced, then ``key`` or ``noise``
                is required.
            use_clipped_model_output: recompute ``eps`` from the clipped / thresholded x0.
            key: PRNG key for the variance noise when ``eta > 0``.
            noise: the standard normal variance noise itself (instead of ``key``).

        Returns:
            ``(state, x_next)``; ``state.pred_original_sample`` holds this step's x0.
        """
        check_step_inputs(self, state, model_output, t, x)
        return self._ddim_step(
            state,
            model_output,
            x,
            eta=eta,
            use_clipped_model_output=use_clipped_model_output,
            key=key,
            noise=noise,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DDIMInverseScheduler(_DDIMBase):
    """DDIM inversion, diffusers' ``DDIMInverseScheduler`` with its defaults.

    Timesteps ascend. Following diffusers, the step at ``t`` calls the model at its
    *destination* ``t`` while moving from level ``min(t - T // N, T - 1)`` (the initial alpha,
    1 with ``set_alpha_to_one``, below 0) to ``t``: it reuses the noise prediction the forward
    step at ``t`` would make, the approximation DDIM inversion rests on. ``timestep_spacing``
    also accepts ``"linspace"`` (diffusers' inverse does not), mirroring the forward grid.
    """

    walks_toward_noise: ClassVar[bool] = True
    inverse_class_name: ClassVar[str] = "DDIMScheduler"

    def step(
        self, state: SchedulerState, model_output: jax.Array, t, x: jax.Array
    ) -> tuple[SchedulerState, jax.Array]:
        """One inversion step toward noise; arguments as :meth:`DDIMScheduler.step`."""
        check_step_inputs(self, state, model_output, t, x)
        return self._ddim_step(
            state, model_output, x, eta=0.0, use_clipped_model_output=False, key=None, noise=None
        )
