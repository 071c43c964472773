"""``DDIMScheduler`` and ``DDIMInverseScheduler``: diffusers' options over the DDIM solver
(:mod:`jaxsched.solvers.ddim`) and DDIM's timestep grid (:mod:`jaxsched.grids.vp`)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

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
from jaxsched.grids.levels import Grid
from jaxsched.grids.timesteps import TIMESTEP_SPACINGS
from jaxsched.grids.vp import ddim_custom_grid, ddim_spaced_grid
from jaxsched.schedulers.base import VPScheduler
from jaxsched.schedulers.checks import check_state
from jaxsched.schedules import NoiseSchedule, get_velocity
from jaxsched.solvers.base import Limits
from jaxsched.solvers.ddim import DDIMSolver
from jaxsched.solvers.prediction import PREDICTION_TYPES
from jaxsched.state import SchedulerState


@dataclasses.dataclass(frozen=True, kw_only=True)
class _DDIMBase(VPScheduler):
    """Options, grid and solver shared by the forward and inverse DDIM schedulers."""

    clip_sample: bool = True
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    clip_sample_range: float = 1.0
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False

    add_noise_levels: ClassVar[str] = "training"

    def _validate(self) -> None:
        super()._validate()
        check_bool("clip_sample", self.clip_sample)
        check_bool("set_alpha_to_one", self.set_alpha_to_one)
        check_int("steps_offset", self.steps_offset, minimum=0)
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        check_float("clip_sample_range", self.clip_sample_range, low=0.0, low_open=True)
        check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)

    def limits(self) -> Limits:
        """The x0 limits of this class (the inverse has no dynamic thresholding)."""
        return Limits(clip_sample=self.clip_sample, clip_sample_range=self.clip_sample_range)

    @property
    def solver(self) -> DDIMSolver:
        return DDIMSolver(prediction_type=self.prediction_type, limits=self.limits())

    def build_grid(
        self, schedule: NoiseSchedule, num_inference_steps, *, timesteps, sigmas, mu
    ) -> Grid:
        """diffusers' grid for the config's spacing (the level past either end is 1 with
        ``set_alpha_to_one``, else ``alphas_cumprod[0]``), or a custom ``(N + 1,)`` grid of
        ``sigma = sqrt((1 - a) / a)`` (descending for sampling and ascending for inversion, 0
        allowed at the clean end; the model is called at the continuous timestep of the
        noisier level of each step)."""
        name = type(self).__name__
        if timesteps is not None:
            raise ValueError(f"{name} takes no custom timesteps; pass a sigma grid as sigmas=")
        if mu is not None:
            raise ValueError(f"{name} takes no mu (it has no flow shift)")
        ascending = self.direction == "to_noise"
        abar = schedule.alphas_cumprod
        if sigmas is not None:
            return ddim_custom_grid(abar, sigmas, ascending=ascending)
        return ddim_spaced_grid(
            abar,
            num_inference_steps,
            spacing=self.timestep_spacing,
            steps_offset=self.steps_offset,
            boundary_alpha=1.0 if self.set_alpha_to_one else abar[0],
            inverse=ascending,
        )

    def _final_sigma(self) -> str:
        return "zero" if self.set_alpha_to_one else "sigma_min"

    def get_velocity(self, state: SchedulerState, sample, noise, timesteps) -> jax.Array:
        """:func:`jaxsched.schedules.get_velocity` on the state's schedule."""
        check_state(self, state)
        return get_velocity(state.schedule, sample, noise, timesteps)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DDIMScheduler(_DDIMBase):
    """DDIM sampling (Song et al. 2021), diffusers' ``DDIMScheduler`` with its defaults.

    A step calls the model at ``t`` and moves from level ``t`` to ``t - T // N``; the last step
    ends at ``alphas_cumprod = 1`` (``set_alpha_to_one``) or ``alphas_cumprod[0]``. ``step``
    takes ``eta`` (0 deterministic to 1 DDPM-like; may be traced, then ``key`` or ``noise`` is
    required) and ``use_clipped_model_output`` (recompute ``eps`` from the limited x0).

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
    step_params: ClassVar[dict[str, Any]] = {"eta": 0.0, "use_clipped_model_output": False}

    def _validate(self) -> None:
        super()._validate()
        check_bool("thresholding", self.thresholding)
        check_float("dynamic_thresholding_ratio", self.dynamic_thresholding_ratio, low=0, high=1)
        check_float("sample_max_value", self.sample_max_value, low=0.0, low_open=True)

    def limits(self) -> Limits:
        return Limits(
            clip_sample=self.clip_sample,
            thresholding=self.thresholding,
            clip_sample_range=self.clip_sample_range,
            dynamic_thresholding_ratio=self.dynamic_thresholding_ratio,
            sample_max_value=self.sample_max_value,
        )

    def check_step_values(self, params: dict[str, Any]) -> None:
        """``eta`` a real scalar in ``[0, 1]`` (diffusers' ``eta > 1`` takes the root of a
        negative variance); ``use_clipped_model_output`` a bool (or a traced bool)."""
        check_scalar_in("eta", params["eta"], 0.0, 1.0)
        flag = params["use_clipped_model_output"]
        if not isinstance(flag, (bool, np.bool_)) and not (
            isinstance(flag, jax.Array) and flag.dtype == jnp.bool_ and flag.ndim == 0
        ):
            raise OptionTypeError(
                f"use_clipped_model_output must be a bool (or a traced bool), got {flag!r}"
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

    direction: ClassVar[str] = "to_noise"
    inverse_class_name: ClassVar[str] = "DDIMScheduler"
