"""``UniPCMultistepScheduler`` (diffusers' options and defaults) and its inverse, over the UniPC
solver (:mod:`jaxsched.solvers.unipc`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np

from jaxsched._checks import (
    OptionTypeError,
    check_bool,
    check_choice,
    check_float,
    concrete_value,
)
from jaxsched.grids.flow import multistep_flow_sigmas
from jaxsched.grids.levels import Grid, chained, flow_levels
from jaxsched.grids.sigmas import karras_sigmas
from jaxsched.grids.vp import SigmaGridOptions, training_sigmas
from jaxsched.schedulers.base import Scheduler
from jaxsched.schedulers.dpmsolver import FINAL_SIGMAS_TYPES
from jaxsched.schedulers.multistep import MultistepScheduler
from jaxsched.schedules import NoiseSchedule
from jaxsched.solvers.multistep import OrderRules
from jaxsched.solvers.unipc import SOLVER_ALIASES, SOLVER_TYPES, UniPCSolver

TIME_SHIFT_TYPES = ("exponential", "linear")


@dataclasses.dataclass(frozen=True)
class UniPCOrderRules(OrderRules):
    """UniPC's orders: warm-up from the run's first step, and with ``lower_order_final`` at
    most ``N - i`` at step ``i`` (whatever ``N``; diffusers' DPM-Solver rule differs)."""

    def nominal(self, num_steps: int, begin_index: int) -> np.ndarray:
        steps = np.arange(num_steps)
        orders = np.clip(steps - begin_index + 1, 1, self.solver_order)
        if self.lower_order_final:
            orders = np.minimum(orders, num_steps - steps)
        return orders.astype(np.int32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _UniPCBase(MultistepScheduler):
    """Options shared by the forward and inverse UniPC schedulers."""

    predict_x0: bool = True
    solver_type: str = "bh2"
    disable_corrector: tuple[int, ...] = ()
    solver_p: Any = None
    final_sigmas_type: str = "zero"
    rescale_betas_zero_snr: bool = False
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"
    sigma_min: float | None = None
    sigma_max: float | None = None
    shift_terminal: float | None = None

    def _normalize(self) -> None:
        super()._normalize()
        # diffusers accepts DPM-Solver / DEIS names here and runs bh2 with them.
        if self.solver_type in SOLVER_ALIASES:
            object.__setattr__(self, "solver_type", "bh2")
        if isinstance(self.disable_corrector, (list, tuple)):
            object.__setattr__(self, "disable_corrector", tuple(self.disable_corrector))
        if isinstance(self.solver_p, Mapping):  # a config, as to_config writes it
            from jaxsched.config import from_config

            object.__setattr__(self, "solver_p", from_config(self.solver_p))

    flow_combines_with: ClassVar[tuple[str, ...]] = ("use_karras_sigmas",)

    def _validate(self) -> None:
        super()._validate()
        check_bool("predict_x0", self.predict_x0)
        check_choice("solver_type", self.solver_type, SOLVER_TYPES + SOLVER_ALIASES)
        if not isinstance(self.disable_corrector, tuple) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in self.disable_corrector
        ):
            raise OptionTypeError(
                f"disable_corrector must be a list of step indices (ints), got "
                f"{self.disable_corrector!r}"
            )
        self._check_solver_p()
        check_choice("final_sigmas_type", self.final_sigmas_type, FINAL_SIGMAS_TYPES)
        check_bool("use_dynamic_shifting", self.use_dynamic_shifting)
        check_choice("time_shift_type", self.time_shift_type, TIME_SHIFT_TYPES)
        for name in ("sigma_min", "sigma_max"):
            if getattr(self, name) is not None:
                check_float(name, getattr(self, name), low=0.0, low_open=True)
        if self.shift_terminal is not None:
            check_float("shift_terminal", self.shift_terminal, low=0.0, high=1.0, high_open=True)
            if not self.use_flow_sigmas:
                raise ValueError("shift_terminal is only supported with use_flow_sigmas=True")
        if self.prediction_type == "flow_prediction" and not self.predict_x0:
            raise ValueError(
                "prediction_type='flow_prediction' needs predict_x0=True (diffusers raises at "
                "the first step)"
            )
        if self.thresholding and not self.predict_x0:
            raise ValueError(
                "thresholding limits the x0 prediction, which predict_x0=False does not use "
                "(diffusers ignores it there); set predict_x0=True or thresholding=False"
            )

    def _check_solver_p(self) -> None:
        """``solver_p`` must be a deterministic forward scheduler of one model call per step;
        its grid is checked against this one's at ``init``."""
        if self.solver_p is None:
            return
        if not isinstance(self.solver_p, Scheduler):
            raise OptionTypeError(
                f"solver_p must be a jaxsched scheduler or None, got {self.solver_p!r:.80}"
            )
        capabilities = self.solver_p.capabilities
        if (
            capabilities.direction != self.direction
            or capabilities.model_calls_per_step != 1
            or capabilities.stochastic
        ):
            raise ValueError(
                f"solver_p must be a deterministic scheduler of one model call per step walking "
                f"the same way as {type(self).__name__}; got {type(self.solver_p).__name__} "
                f"({capabilities})"
            )

    @property
    def sigma_spacing(self) -> str | None:
        """diffusers' UniPC checks karras before flow: with both, karras VP sigmas become
        flow sigmas ``rho / (1 + rho)``."""
        if self.use_karras_sigmas and self.use_flow_sigmas:
            return "karras_flow"
        return super().sigma_spacing

    @property
    def dynamic_shifting(self) -> bool:
        return self.use_dynamic_shifting

    def order_rules(self) -> OrderRules:
        return UniPCOrderRules(self.solver_order, self.lower_order_final)

    @property
    def solver(self) -> UniPCSolver:
        return UniPCSolver(
            prediction_type=self.prediction_type,
            rules=self.order_rules(),
            limits=self.limits(),
            solver_type=self.solver_type,
            predict_x0=self.predict_x0,
            disable_corrector=self.disable_corrector,
            solver_p=self.solver_p,
            correct_first_step=self.direction == "to_data",
        )

    def grid_options(self) -> SigmaGridOptions:
        """N points of a sigma spacing then the final sigma (``sigma_min``: the spacing's last
        sigma repeated, or the smallest training sigma after timesteps), karras timesteps
        rounded."""
        last = "last" if self.sigma_spacing is not None else "sigma_min"
        return self._grid_options(
            final_sigma="zero" if self.final_sigmas_type == "zero" else last,
            spaced_end="final",
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
        )

    def _final_sigma(self) -> str:
        final = self.grid_options().final_sigma
        return "sigma_min" if final == "last" else final

    def _final(self, sigmas: np.ndarray) -> float:
        """The flow grid's final sigma: 0, or its last sigma repeated (``sigma_min``)."""
        return 0.0 if self.final_sigmas_type == "zero" else float(sigmas[-1])

    def _flow_grid(self, schedule: NoiseSchedule, n: int | None, sigmas, mu) -> Grid:
        """diffusers' UniPC flow grid: ``N`` flow sigmas (see
        :func:`~jaxsched.grids.flow.multistep_flow_sigmas`; with karras, the karras VP sigmas
        as flow sigmas ``rho / (1 + rho)``), then the final sigma; the model is called at
        ``int(s T)``."""
        t_count = self.num_train_timesteps
        if self.sigma_spacing == "karras_flow":
            if sigmas is not None:
                raise ValueError("custom sigmas cannot be used with karras sigmas")
            train = training_sigmas(schedule.alphas_cumprod, "karras", None)
            if train.xp is not np:
                raise ValueError("karras flow sigmas need a concrete noise schedule")
            lo = float(train.sigmas[0]) if self.sigma_min is None else self.sigma_min
            hi = float(train.sigmas[-1]) if self.sigma_max is None else self.sigma_max
            rho = karras_sigmas(lo, hi, n, np)
            s = rho / (rho + 1.0)
        else:
            s = multistep_flow_sigmas(
                t_count,
                n,
                sigmas=sigmas,
                shift=self.flow_shift,
                mu=mu,
                time_shift_type=self.time_shift_type,
                shift_terminal=self.shift_terminal,
            )
        ts = (s * t_count).astype(np.int64)
        levels = np.concatenate([s, [self._final(s)]]).astype(np.float32)
        if self.direction == "to_noise":
            levels = np.concatenate([levels[-2::-1], levels[:1]])
            ts = ts[::-1]
        dtype = schedule.alphas_cumprod.dtype
        return chained(jnp.asarray(ts, jnp.int32), flow_levels(jnp.asarray(levels, dtype)))

    def build_grid(
        self, schedule: NoiseSchedule, num_inference_steps, *, timesteps, sigmas, mu
    ) -> Grid:
        """diffusers' UniPC grid. With ``use_flow_sigmas``, custom ``sigmas`` are diffusers'
        ``N`` flow sigmas (shifted like the built-in ones); otherwise ``sigmas`` is jaxsched's
        custom ``(N + 1,)`` grid, as for DPM-Solver. ``mu`` is required with
        ``use_dynamic_shifting`` (diffusers' rule) and used by the flow grid."""
        if self.use_dynamic_shifting and mu is None:
            raise ValueError("mu must be passed to init when use_dynamic_shifting=True")
        if not self.use_flow_sigmas:
            if self.use_dynamic_shifting:
                mu = None  # diffusers requires it but only the flow grid uses it
            grid = super().build_grid(
                schedule, num_inference_steps, timesteps=timesteps, sigmas=sigmas, mu=mu
            )
            self._check_solver_p_grid(grid)
            return grid
        if timesteps is not None:
            raise ValueError("custom timesteps cannot be used with flow sigmas")
        if mu is not None and not self.use_dynamic_shifting:
            raise ValueError("mu is only used with use_dynamic_shifting=True")
        if concrete_value(schedule.alphas_cumprod) is None:
            raise ValueError("UniPC's flow sigmas need a concrete noise schedule")
        grid = self._flow_grid(schedule, num_inference_steps, sigmas, mu)
        self._check_solver_p_grid(grid)
        return grid

    def _check_solver_p_grid(self, grid: Grid) -> None:
        """``solver_p`` steps on its own grid of ``N`` steps, at the step this run is at: its
        timesteps must be this run's (diffusers looks each one up in its own grid)."""
        if self.solver_p is None:
            return
        theirs = concrete_value(self.solver_p.grid(len(grid.timesteps)).timesteps)
        ours = concrete_value(grid.timesteps)
        if theirs is not None and ours is not None and not np.array_equal(theirs, ours):
            raise ValueError(
                f"solver_p's grid of {len(ours)} steps has other timesteps ({theirs[:4]}...) "
                f"than this run ({ours[:4]}...); give it the same spacing options"
            )

    def _check_grid_arguments(self, num_inference_steps, timesteps, sigmas) -> None:
        """With flow sigmas, custom ``sigmas`` are ``N`` points (``N`` may be omitted)."""
        if self.use_flow_sigmas and sigmas is not None and num_inference_steps is None:
            return
        super()._check_grid_arguments(num_inference_steps, timesteps, sigmas)


@dataclasses.dataclass(frozen=True, kw_only=True)
class UniPCMultistepScheduler(_UniPCBase):
    """UniPC multistep sampling (Zhao et al. 2023), diffusers' ``UniPCMultistepScheduler`` with
    its options and defaults: a predictor of order ``solver_order`` and a corrector that reuses
    the next model output, one model call per step.

    Example::

        sched = jaxsched.UniPCMultistepScheduler(solver_order=2)
        state = sched.init(10, shape=x.shape)
        x0 = jaxsched.sample(sched, state, model_fn, x)
    """

    inverse_class_name: ClassVar[str] = "UniPCMultistepInverseScheduler"
    direction_only_options: ClassVar[tuple[str, ...]] = ("final_sigmas_type",)


@dataclasses.dataclass(frozen=True, kw_only=True)
class UniPCMultistepInverseScheduler(_UniPCBase):
    """UniPC inversion (data -> noise), which diffusers lacks: the same predictor-corrector
    walked toward noise on the ascending grid of ``DPMSolverMultistepInverseScheduler`` (flow
    sigmas: UniPC's forward flow levels reversed, the smallest one repeated at the start), one
    model call per step.

    The corrector never redoes its first step, out of ``sigma_min``: there the x0 prediction
    stays near the data and then turns, far from the linear-in-lambda model the corrector
    fits over that wide step. Corrected, the round trip of the demo's digits at 10 steps is
    1.1 (4.1e-1 with the exact ``rho = b_1`` instead of diffusers' ``1/2``); uncorrected 0.11,
    DPM-Solver++'s 0.10. The global order is then 2, as for DPM-Solver's inverse, whose first
    step is first order too."""

    direction: ClassVar[str] = "to_noise"
    inverse_class_name: ClassVar[str] = "UniPCMultistepScheduler"

    def grid_options(self) -> SigmaGridOptions:
        """Sigma spacings end with their last sigma repeated, as DPM-Solver's inverse."""
        return self._grid_options(
            final_sigma="sigma_min",
            spaced_end="repeat",
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
        )
