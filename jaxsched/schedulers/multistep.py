"""The options the multistep schedulers (DPM-Solver and DEIS, forward and inverse) share, and
how they describe their sigma grid (:mod:`jaxsched.grids.vp`)."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from jaxsched._checks import check_bool, check_choice, check_float, check_int
from jaxsched.grids.levels import Grid
from jaxsched.grids.timesteps import TIMESTEP_SPACINGS, check_custom_timesteps
from jaxsched.grids.vp import (
    SigmaGridOptions,
    clamp_zero_levels,
    custom_sigma_grid,
    forward_sigma_grid,
    inverse_sigma_grid,
)
from jaxsched.schedulers.base import VPScheduler
from jaxsched.schedules import NoiseSchedule, flow_shift_of_mu
from jaxsched.solvers.base import Limits
from jaxsched.solvers.multistep import OrderRules

MULTISTEP_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")
# diffusers' precedence of the sigma spacing flags.
SPACING_FLAGS = (
    ("use_karras_sigmas", "karras"),
    ("use_lu_lambdas", "lu"),
    ("use_exponential_sigmas", "exponential"),
    ("use_beta_sigmas", "beta"),
    ("use_flow_sigmas", "flow"),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultistepScheduler(VPScheduler):
    """Options the multistep schedulers share; each class adds its own and says how its sigma
    grid ends (:meth:`grid_options`) and which solver it runs (``solver``)."""

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

    #: Four steps per scan iteration: XLA then rotates the history buffers through the unrolled
    #: body instead of copying each one every step (measured about 2x on CPU).
    scan_unroll: ClassVar[int] = 4
    #: Spacing flags a class's flow grid combines with (diffusers' UniPC: karras).
    flow_combines_with: ClassVar[tuple[str, ...]] = ()

    def _validate(self) -> None:
        super()._validate()
        check_int("solver_order", self.solver_order)
        check_choice("solver_order", self.solver_order, (1, 2, 3))
        check_choice("prediction_type", self.prediction_type, MULTISTEP_PREDICTION_TYPES)
        check_bool("thresholding", self.thresholding)
        check_float("dynamic_thresholding_ratio", self.dynamic_thresholding_ratio, low=0, high=1)
        check_float("sample_max_value", self.sample_max_value, low=0.0, low_open=True)
        flags = [name for name, _ in SPACING_FLAGS if hasattr(self, name)]
        for flag in ("lower_order_final", *flags):
            check_bool(flag, getattr(self, flag))
        if self.use_karras_sigmas + self.use_exponential_sigmas + self.use_beta_sigmas > 1:
            raise ValueError(
                "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas can be on"
            )
        others = [
            f
            for f in flags
            if f != "use_flow_sigmas" and f not in self.flow_combines_with and getattr(self, f)
        ]
        if self.use_flow_sigmas and others:
            raise ValueError(f"use_flow_sigmas cannot be combined with {others}")
        check_float("flow_shift", self.flow_shift, low=0.0, low_open=True)
        check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        check_int("steps_offset", self.steps_offset, minimum=0)

    # -- what the class describes ------------------------------------------------------------------

    @property
    def sigma_spacing(self) -> str | None:
        """The sigma spacing diffusers applies, in its order of precedence (``None``: the
        timesteps come first)."""
        for flag, name in SPACING_FLAGS:
            if getattr(self, flag, False):
                return name
        return None

    @property
    def dynamic_shifting(self) -> bool:
        """Whether ``mu`` sets the flow shift (classes with ``use_dynamic_shifting``)."""
        return False

    def limits(self) -> Limits:
        return Limits(
            thresholding=self.thresholding,
            dynamic_thresholding_ratio=self.dynamic_thresholding_ratio,
            sample_max_value=self.sample_max_value,
        )

    def order_rules(self) -> OrderRules:
        """diffusers' per-step order rules of this class."""
        return OrderRules(self.solver_order, self.lower_order_final)

    def grid_options(self) -> SigmaGridOptions:
        """The options that shape this class's sigma grid (per class)."""
        raise NotImplementedError

    def _final_sigma(self) -> str:
        return self.grid_options().final_sigma

    def _levels_kind(self) -> str:
        return "flow" if self.use_flow_sigmas else "vp"

    # -- the grid --------------------------------------------------------------------------------

    def training_schedule(self, schedule: NoiseSchedule | None = None) -> NoiseSchedule:
        """The run's schedule with its zero levels clamped (``clamp_zero_levels``: diffusers'
        clamp of a zero terminal SNR, also applied to levels that underflow)."""
        return clamp_zero_levels(self.noise_schedule(schedule), self.rescale_betas_zero_snr)

    def build_grid(
        self, schedule: NoiseSchedule, num_inference_steps, *, timesteps, sigmas, mu
    ) -> Grid:
        """diffusers' sigma grid of the config (forward or inverse), or a custom one:
        ``timesteps`` (forward classes, not with a sigma spacing) or ``sigmas`` (a custom
        ``(N + 1,)`` grid: VP grid sigmas, or flow sigmas with ``use_flow_sigmas``; other sigma
        spacings are rejected). ``mu`` sets the flow shift ``exp(mu)`` with
        ``use_dynamic_shifting``."""
        name, spacing = type(self).__name__, self.sigma_spacing
        inverse = self.direction == "to_noise"
        if timesteps is not None:
            if inverse:
                raise ValueError(f"{name} takes no custom timesteps")
            if spacing is not None:
                raise ValueError(f"custom timesteps cannot be used with {spacing} sigmas")
            timesteps = check_custom_timesteps(timesteps, self.num_train_timesteps)
            num_inference_steps = len(timesteps)
        if spacing not in (None, "flow") and sigmas is not None:
            raise ValueError(f"custom sigmas cannot be used with {spacing} sigmas")
        if mu is not None and sigmas is not None:
            raise ValueError("mu shifts the built-in flow grid; custom sigmas are used as given")
        if mu is not None and not self.dynamic_shifting:
            raise ValueError("mu is only used with use_dynamic_shifting=True")
        options = self.grid_options()
        if sigmas is not None:
            return custom_sigma_grid(
                options,
                schedule,
                sigmas,
                ascending=inverse,
                zero_last=not inverse and self.ends_at_zero_sigma,
            )
        flow_shift = self.flow_shift if mu is None else flow_shift_of_mu(mu)
        if inverse:
            return inverse_sigma_grid(options, schedule, num_inference_steps, flow_shift)
        return forward_sigma_grid(options, schedule, num_inference_steps, timesteps, flow_shift)

    @property
    def ends_at_zero_sigma(self) -> bool:
        """Whether a forward grid may end at sigma = 0 (the noise-form DPM-Solver may not)."""
        return True

    def _grid_options(self, **options) -> SigmaGridOptions:
        """:class:`SigmaGridOptions` of the shared options, with the class's ``options``."""
        defaults = {
            "num_train_timesteps": self.num_train_timesteps,
            "timestep_spacing": self.timestep_spacing,
            "steps_offset": self.steps_offset,
            "spacing": self.sigma_spacing,
            "flow_shift": self.flow_shift,
            "lambda_min_clipped": -math.inf,
            "round_karras": True,
            "zero_snr": self.rescale_betas_zero_snr,
        }
        return SigmaGridOptions(**{**defaults, **options})
