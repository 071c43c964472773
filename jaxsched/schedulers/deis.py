"""``DEISMultistepScheduler`` (diffusers' options and defaults) and its inverse, over the DEIS
solver (:mod:`jaxsched.solvers.deis`)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jaxsched._checks import check_bool, check_choice
from jaxsched.grids.vp import SigmaGridOptions
from jaxsched.schedulers.multistep import MultistepScheduler
from jaxsched.solvers.deis import (
    ALGORITHM_ALIASES,
    ALGORITHM_TYPES,
    SOLVER_ALIASES,
    SOLVER_TYPES,
    DEISSolver,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _DEISBase(MultistepScheduler):
    """Options shared by the forward and inverse DEIS schedulers."""

    algorithm_type: str = "deis"
    solver_type: str = "logrho"
    #: jaxsched extension. diffusers ends karras / exponential / beta / flow grids by repeating
    #: their last sigma, so the last step has zero length and its model call is wasted (True,
    #: the default, reproduces that). False spaces ``N + 1`` sigmas and calls the model at the
    #: first ``N``, so every step moves and the run ends on the spacing's last sigma.
    repeat_final_sigma: bool = True

    extension_options: ClassVar[tuple[str, ...]] = ("repeat_final_sigma",)

    def _normalize(self) -> None:
        super()._normalize()
        # diffusers accepts DPM-Solver / UniPC names here and runs DEIS with them.
        if self.algorithm_type in ALGORITHM_ALIASES:
            object.__setattr__(self, "algorithm_type", "deis")
        if self.solver_type in SOLVER_ALIASES:
            object.__setattr__(self, "solver_type", "logrho")

    def _validate(self) -> None:
        super()._validate()
        check_choice("algorithm_type", self.algorithm_type, ALGORITHM_TYPES + ALGORITHM_ALIASES)
        check_choice("solver_type", self.solver_type, SOLVER_TYPES + SOLVER_ALIASES)
        check_bool("repeat_final_sigma", self.repeat_final_sigma)

    @property
    def solver(self) -> DEISSolver:
        return DEISSolver(
            prediction_type=self.prediction_type, rules=self.order_rules(), limits=self.limits()
        )

    def grid_options(self) -> SigmaGridOptions:
        """Sigma spacings end with their last sigma repeated (``repeat_final_sigma``) or on
        one more point; the default grid ends at the smallest training sigma."""
        return self._grid_options(
            final_sigma="sigma_min", spaced_end="repeat" if self.repeat_final_sigma else "extend"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DEISMultistepScheduler(_DEISBase):
    """DEIS multistep sampling (orders 1-3, log-rho), diffusers' ``DEISMultistepScheduler``
    with its options and defaults.

    Same numbers as diffusers at ordinary step counts, but the weights are computed without
    cancellation (see :mod:`jaxsched.solvers.deis`), so order 3 keeps converging where
    diffusers' float32 weights diverge. Custom ``timesteps`` are accepted (an extension).

    Example::

        sched = jaxsched.DEISMultistepScheduler(solver_order=3)
        state = sched.init(25, shape=x.shape)
        x0 = jaxsched.sample(sched, state, model_fn, x)
    """

    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"

    inverse_class_name: ClassVar[str] = "DEISMultistepInverseScheduler"

    def _validate(self) -> None:
        super()._validate()
        check_bool("use_dynamic_shifting", self.use_dynamic_shifting)
        check_choice("time_shift_type", self.time_shift_type, ("exponential",))

    @property
    def dynamic_shifting(self) -> bool:
        return self.use_dynamic_shifting


@dataclasses.dataclass(frozen=True, kw_only=True)
class DEISMultistepInverseScheduler(_DEISBase):
    """DEIS inversion (data -> noise): the DEIS update walked toward noise on the ascending grid
    that ``DPMSolverMultistepInverseScheduler`` uses. diffusers has no DEIS inverse; this one
    relates to :class:`DEISMultistepScheduler` as diffusers' DPM-Solver inverse relates to its
    forward scheduler (same options, less the dynamic shifting)."""

    direction: ClassVar[str] = "to_noise"
    inverse_class_name: ClassVar[str] = "DEISMultistepScheduler"
