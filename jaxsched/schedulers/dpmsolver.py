"""``DPMSolverMultistepScheduler`` and its inverse: diffusers' options over the DPM-Solver
solver (:mod:`jaxsched.solvers.dpmsolver`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax.numpy as jnp
from jax.experimental import checkify

from jaxsched._checks import OptionTypeError, check_bool, check_choice, concrete_value
from jaxsched.grids.levels import Grid
from jaxsched.grids.vp import SigmaGridOptions
from jaxsched.schedulers.multistep import MultistepScheduler
from jaxsched.schedules import NoiseSchedule
from jaxsched.solvers.dpmsolver import ALGORITHM_TYPES, SOLVER_TYPES, DPMSolver
from jaxsched.solvers.multistep import OrderRules

VARIANCE_TYPES = (None, "learned", "learned_range")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _DPMBase(MultistepScheduler):
    """Options shared by the forward and inverse DPM-Solver schedulers."""

    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    euler_at_final: bool = False
    lambda_min_clipped: float = -math.inf
    variance_type: str | None = None
    #: jaxsched extension: third-order weights exact for quadratic predictions (README).
    exact_third_order: bool = False

    extension_options: ClassVar[tuple[str, ...]] = ("exact_third_order",)

    def _normalize(self) -> None:
        super()._normalize()
        # diffusers maps DEIS / UniPC settings onto their DPM-Solver counterparts.
        if self.algorithm_type == "deis":
            object.__setattr__(self, "algorithm_type", "dpmsolver++")
        if self.solver_type in ("logrho", "bh1", "bh2"):
            object.__setattr__(self, "solver_type", "midpoint")

    def _validate(self) -> None:
        super()._validate()
        check_choice("algorithm_type", self.algorithm_type, ALGORITHM_TYPES)
        check_choice("solver_type", self.solver_type, SOLVER_TYPES)
        check_bool("euler_at_final", self.euler_at_final)
        check_bool("exact_third_order", self.exact_third_order)
        if isinstance(self.lambda_min_clipped, bool) or not isinstance(
            self.lambda_min_clipped, (int, float)
        ):
            raise OptionTypeError(
                f"lambda_min_clipped must be a number, got {self.lambda_min_clipped!r}"
            )
        if math.isnan(self.lambda_min_clipped) or self.lambda_min_clipped == math.inf:
            raise ValueError(
                f"lambda_min_clipped must be finite or -inf (off), got {self.lambda_min_clipped}"
            )
        check_choice("variance_type", self.variance_type, VARIANCE_TYPES)
        if not self.algorithm_type.endswith("++") and self.prediction_type == "flow_prediction":
            raise ValueError(
                f"prediction_type='flow_prediction' needs a data-prediction algorithm "
                f"('dpmsolver++' or 'sde-dpmsolver++'), got {self.algorithm_type!r}"
            )

    @property
    def solver(self) -> DPMSolver:
        return DPMSolver(
            algorithm_type=self.algorithm_type,
            solver_type=self.solver_type,
            prediction_type=self.prediction_type,
            rules=self.order_rules(),
            limits=self.limits(),
            exact_third_order=self.exact_third_order,
        )

    @property
    def ends_at_zero_sigma(self) -> bool:
        """Only the data-prediction (``++``) algorithms can step to sigma = 0."""
        return self.algorithm_type.endswith("++")

    def prepare_model_output(self, model_output, x):
        """With ``variance_type`` set and epsilon prediction, the model output may carry the
        predicted variance as extra channels: the first ``x.shape[1]`` channels are used
        (diffusers hard-codes 3)."""
        if self.variance_type is None or self.prediction_type != "epsilon":
            return model_output
        if jnp.ndim(model_output) < 2 or jnp.ndim(x) < 2:
            raise ValueError(
                f"variance_type={self.variance_type!r} splits the model output along a channel "
                f"axis (batch, channels, ...); got model_output shape "
                f"{jnp.shape(model_output)} and sample shape {jnp.shape(x)}"
            )
        return model_output[:, : jnp.shape(x)[1]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPMSolverMultistepScheduler(_DPMBase):
    """DPM-Solver / DPM-Solver++ multistep sampling, diffusers' ``DPMSolverMultistepScheduler``
    with its options and defaults. ``step`` takes ``key`` / ``noise`` for the SDE variants.

    Example::

        sched = jaxsched.DPMSolverMultistepScheduler(solver_order=2, use_karras_sigmas=True)
        state = sched.init(25, shape=x.shape)
        x0 = jaxsched.sample(sched, state, model_fn, x)
    """

    use_lu_lambdas: bool = False
    final_sigmas_type: str = "zero"
    rescale_betas_zero_snr: bool = False
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"

    inverse_class_name: ClassVar[str] = "DPMSolverMultistepInverseScheduler"
    direction_only_options: ClassVar[tuple[str, ...]] = ("final_sigmas_type",)

    def _validate(self) -> None:
        super()._validate()
        check_bool("use_dynamic_shifting", self.use_dynamic_shifting)
        check_choice("final_sigmas_type", self.final_sigmas_type, FINAL_SIGMAS_TYPES)
        check_choice("time_shift_type", self.time_shift_type, ("exponential",))
        if not self.algorithm_type.endswith("++") and self.final_sigmas_type == "zero":
            raise ValueError(
                f"final_sigmas_type='zero' is not supported with algorithm_type="
                f"{self.algorithm_type!r}; use final_sigmas_type='sigma_min'"
            )

    @property
    def dynamic_shifting(self) -> bool:
        return self.use_dynamic_shifting

    def order_rules(self) -> OrderRules:
        return OrderRules(
            self.solver_order,
            self.lower_order_final,
            euler_at_final=self.euler_at_final,
            final_sigmas_type=self.final_sigmas_type,
        )

    def grid_options(self) -> SigmaGridOptions:
        """N points of a sigma spacing then the final sigma; karras and lu timesteps rounded
        but on the cosine schedule (diffusers' DPM-Solver)."""
        return self._grid_options(
            final_sigma=self.final_sigmas_type,
            spaced_end="final",
            lambda_min_clipped=self.lambda_min_clipped,
            round_karras=self.beta_schedule != "squaredcos_cap_v2",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPMSolverMultistepInverseScheduler(_DPMBase):
    """DPM-Solver inversion (data -> noise), diffusers' ``DPMSolverMultistepInverseScheduler``
    with its options and defaults.

    The same update walked toward noise on an ascending grid. Differences from diffusers (see
    the README): every one of the ``N`` steps runs, with timesteps and sigmas aligned (diffusers
    drops repeated timesteps but not their sigmas); flow sigmas ascend; SDE algorithms are
    rejected, since a stochastic solver has no deterministic inverse (diffusers' are NaN).
    """

    direction: ClassVar[str] = "to_noise"
    inverse_class_name: ClassVar[str] = "DPMSolverMultistepScheduler"

    def _validate(self) -> None:
        super()._validate()
        if self.algorithm_type.startswith("sde"):
            raise ValueError(
                f"algorithm_type={self.algorithm_type!r} cannot invert: an SDE step toward noise "
                "would need a negative noise variance sigma_t^2 (1 - e^(-2h)) with h < 0, and a "
                "stochastic step has no deterministic inverse (its natural counterpart, the "
                "forward diffusion, ignores the model). Invert with 'dpmsolver++' or 'dpmsolver' "
                "(the probability-flow ODE), or noise data with jaxsched.add_noise"
            )

    def order_rules(self) -> OrderRules:
        return OrderRules(self.solver_order, self.lower_order_final, self.euler_at_final)

    def grid_options(self) -> SigmaGridOptions:
        """Sigma spacings end with their last sigma repeated, as diffusers' inverse."""
        return self._grid_options(
            final_sigma="sigma_min",
            spaced_end="repeat",
            lambda_min_clipped=self.lambda_min_clipped,
        )

    def build_grid(
        self, schedule: NoiseSchedule, num_inference_steps, *, timesteps, sigmas, mu
    ) -> Grid:
        """The ascending grid; a ``++`` grid must start above sigma 0.

        From ``sigma_s = 0`` (``beta_start=0``) the data-prediction step ``(sigma_t /
        sigma_s) x + ...`` is ``inf - inf``: diffusers returns NaN. That step needs the noise
        prediction, which only the noise-form algorithm carries, so it raises (concrete grid)
        or fails :func:`jaxsched.checked` (traced grid).
        """
        grid = super().build_grid(
            schedule, num_inference_steps, timesteps=timesteps, sigmas=sigmas, mu=mu
        )
        if self.algorithm_type.endswith("++"):
            first = grid.start.grid_sigma[0]
            start = concrete_value(first)
            message = (
                f"the inverse grid starts at sigma = 0 (alphas_cumprod = 1, e.g. beta_start=0), "
                f"where {self.algorithm_type!r} is undefined (sigma_t / 0); invert with "
                "algorithm_type='dpmsolver', DDIMInverseScheduler or DEISMultistepInverseScheduler"
            )
            if start is None:
                checkify.debug_check(first > 0, message)
            elif start <= 0:
                raise ValueError(message)
        return grid

    def _inverse_needs(self) -> dict[str, Any]:
        """Noise-form algorithms need the forward grid to end at ``sigma_min`` (a zero final
        sigma is NaN for them), the level this grid starts from."""
        return {} if self.algorithm_type.endswith("++") else {"final_sigmas_type": "sigma_min"}
