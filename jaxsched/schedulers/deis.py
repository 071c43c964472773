"""``DEISMultistepScheduler`` (diffusers' options and defaults) and its inverse."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax

from jaxsched._checks import check_bool, check_choice
from jaxsched.schedulers.multistep import MultistepScheduler, sigma_spacing
from jaxsched.schedules import NoiseSchedule
from jaxsched.solvers.deis import (
    ALGORITHM_ALIASES,
    ALGORITHM_TYPES,
    SOLVER_ALIASES,
    SOLVER_TYPES,
    deis_step_weights,
)
from jaxsched.solvers.multistep import (
    MultistepCoefficients,
    differentiable_where_finite,
)
from jaxsched.solvers.prediction import noise_from_data
from jaxsched.solvers.safe_math import log_or_minus_inf
from jaxsched.state import SchedulerState


@dataclasses.dataclass(frozen=True, kw_only=True)
class _DEISBase(MultistepScheduler):
    """Options, weights and model-output conversion shared by the forward and inverse DEIS
    schedulers. The solver variable is the noise prediction ``eps``."""

    algorithm_type: str = "deis"
    solver_type: str = "logrho"
    #: jaxsched extension. diffusers ends karras / exponential / beta / flow grids by repeating
    #: their last sigma, so the last step has zero length and its model call is wasted (True,
    #: the default, reproduces that). False spaces ``N + 1`` sigmas and calls the model at the
    #: first ``N``, so every step moves and the run ends on the spacing's last sigma.
    repeat_final_sigma: bool = True

    extension_options: ClassVar[tuple[str, ...]] = ("repeat_final_sigma",)

    def __post_init__(self) -> None:
        # diffusers accepts DPM-Solver / UniPC names here and runs DEIS with them.
        if self.algorithm_type in ALGORITHM_ALIASES:
            object.__setattr__(self, "algorithm_type", "deis")
        if self.solver_type in SOLVER_ALIASES:
            object.__setattr__(self, "solver_type", "logrho")
        super().__post_init__()

    def _validate(self) -> None:
        super()._validate()
        check_choice("algorithm_type", self.algorithm_type, ALGORITHM_TYPES + ALGORITHM_ALIASES)
        check_choice("solver_type", self.solver_type, SOLVER_TYPES + SOLVER_ALIASES)
        check_bool("repeat_final_sigma", self.repeat_final_sigma)

    def _rhos(self, sigmas: jax.Array) -> jax.Array:
        """``rho = sigma / alpha`` of each grid sigma: the VP grid sigma itself, ``s / (1 - s)``
        for flow sigmas."""
        return sigmas / (1.0 - sigmas) if self.use_flow_sigmas else sigmas

    def coefficients(self, sigmas: jax.Array, begin_index: int = 0) -> MultistepCoefficients:
        """Every step's tables from the ``(N + 1,)`` sigma grid, for a run that begins at step
        ``begin_index``."""
        n = sigmas.shape[0] - 1
        alpha, sigma = self._levels(sigmas)
        rho = self._rhos(sigmas)
        log_rho = log_or_minus_inf(rho)
        log_rhos, order = self._nodes_and_orders(log_rho, begin_index)
        weights = differentiable_where_finite(
            lambda nodes: deis_step_weights(
                (alpha[:n], alpha[1:]), (rho[:n], rho[1:]), nodes, order
            ),
            log_rhos,
        )
        # diffusers converts flow predictions with the raw grid sigma, flow sigmas or not.
        convert_sigma = sigmas if self.prediction_type == "flow_prediction" else sigma
        return MultistepCoefficients(
            alpha=alpha[:n], sigma=convert_sigma[:n], weights=weights, order=order
        )

    def convert_model_output(self, state: SchedulerState, model_output, x):
        """``(eps, x0)``: the noise prediction after thresholding, and the x0 prediction.

        As in diffusers, every prediction but epsilon goes through x0: ``eps = (x - alpha x0) /
        sigma``. That matters off the variance-preserving path: v on flow levels
        (``alpha + sigma = 1``), and flow predictions, whose ``x0 = x - s v`` uses the raw grid
        sigma ``s`` (then also the ``sigma`` here) whatever the levels.
        """
        x0, eps, alpha, sigma = self._data_and_noise(state, model_output, x)
        if self.prediction_type != "epsilon":
            eps = noise_from_data(x, x0, alpha, sigma)
        return eps, x0


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

    def sigma_grid(self, schedule: NoiseSchedule, num_inference_steps, timesteps, flow_shift):
        """``(timesteps (N,) int, sigmas (N + 1,))`` as diffusers' ``set_timesteps`` builds
        them: the default grid ends at the smallest training sigma; sigma spacings repeat their
        last sigma (see ``repeat_final_sigma``)."""
        xp, _, train_sigmas, log_sigmas, _ = self._training_sigmas(schedule, flow_shift)
        n = num_inference_steps
        table_dtype = schedule.alphas_cumprod.dtype
        if sigma_spacing(self) is not None:
            return self._repeating_spacing_grid(
                n, xp, train_sigmas, log_sigmas, flow_shift, table_dtype, ascending=False
            )
        ts = self._descending_timesteps(n, timesteps, self.num_train_timesteps)
        sigmas = self._sigmas_at(ts, xp, train_sigmas)
        sigmas = xp.concatenate([sigmas, train_sigmas[:1]])
        return self._finish_grid(ts, sigmas, xp, table_dtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DEISMultistepInverseScheduler(_DEISBase):
    """DEIS inversion (data -> noise): the DEIS update walked toward noise on the ascending grid
    that ``DPMSolverMultistepInverseScheduler`` uses. diffusers has no DEIS inverse; this one
    relates to :class:`DEISMultistepScheduler` as diffusers' DPM-Solver inverse relates to its
    forward scheduler (same options, less the dynamic shifting)."""

    walks_toward_noise: ClassVar[bool] = True
    inverse_class_name: ClassVar[str] = "DEISMultistepScheduler"

    sigma_grid = MultistepScheduler.inverse_sigma_grid
