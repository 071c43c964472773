"""``DPMSolverMultistepScheduler``: diffusers' options, table-driven orders, one fused step."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from jaxsched._checks import OptionTypeError, check_bool, check_choice, concrete_value
from jaxsched.schedulers.multistep import MultistepScheduler, sigma_spacing
from jaxsched.schedules import NoiseSchedule
from jaxsched.solvers.dpmsolver import ALGORITHM_TYPES, SOLVER_TYPES, step_weights
from jaxsched.solvers.multistep import (
    MultistepCoefficients,
    differentiable_where_finite,
)
from jaxsched.solvers.safe_math import log_or_minus_inf
from jaxsched.state import SchedulerState

VARIANCE_TYPES = (None, "learned", "learned_range")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _DPMBase(MultistepScheduler):
    """Options, weights and model-output conversion shared by the forward and inverse
    DPM-Solver schedulers."""

    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    euler_at_final: bool = False
    lambda_min_clipped: float = -math.inf
    variance_type: str | None = None

    # Forward-only option; the forward class overrides it with a field.
    exact_third_order: ClassVar[bool] = False

    def __post_init__(self) -> None:
        # diffusers maps DEIS / UniPC settings onto their DPM-Solver counterparts.
        if self.algorithm_type == "deis":
            object.__setattr__(self, "algorithm_type", "dpmsolver++")
        if self.solver_type in ("logrho", "bh1", "bh2"):
            object.__setattr__(self, "solver_type", "midpoint")
        super().__post_init__()

    def _validate(self) -> None:
        super()._validate()
        check_choice("algorithm_type", self.algorithm_type, ALGORITHM_TYPES)
        check_choice("solver_type", self.solver_type, SOLVER_TYPES)
        check_bool("euler_at_final", self.euler_at_final)
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
    def ends_at_zero_sigma_ok(self) -> bool:
        """Only the data-prediction (``++``) algorithms can step to sigma = 0."""
        return self.algorithm_type.endswith("++")

    def coefficients(self, sigmas: jax.Array, begin_index: int = 0) -> MultistepCoefficients:
        """Every step's tables from the ``(N + 1,)`` sigma grid, for a run that begins at step
        ``begin_index``."""
        n = sigmas.shape[0] - 1
        alpha, sigma = self._levels(sigmas)
        # diffusers converts flow predictions with the raw grid sigma, flow sigmas or not.
        flow = self.prediction_type == "flow_prediction"
        convert_alpha, convert_sigma = (1.0 - sigmas, sigmas) if flow else (alpha, sigma)
        lam = log_or_minus_inf(alpha) - log_or_minus_inf(sigma)
        lambdas, order = self._nodes_and_orders(lam, begin_index)
        # A step to sigma = 0 (h = inf) is first order, as diffusers makes a final step to a zero
        # sigma: the higher-order terms divide a finite slope by r = h_prev / h = 0.
        order = jnp.where(jnp.isfinite(lambdas[0]), order, 1)
        weights = differentiable_where_finite(
            lambda nodes: step_weights(
                self.algorithm_type,
                self.solver_type,
                (alpha[:n], alpha[1:]),
                (sigma[:n], sigma[1:]),
                nodes,
                order,
                exact_third_order=self.exact_third_order,
            ),
            lambdas,
        )
        return MultistepCoefficients(
            alpha=convert_alpha[:n], sigma=convert_sigma[:n], weights=weights, order=order
        )

    def convert_model_output(self, state: SchedulerState, model_output, x):
        """``(target, x0)``: the model output as the solver's variable (x0 for ``++``, eps for
        noise-form algorithms) after thresholding, and the x0 prediction."""
        x0, eps, _, _ = self._data_and_noise(state, model_output, x)
        return (x0 if self.algorithm_type.endswith("++") else eps), x0

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
        """One multistep DPM-Solver step; ``key``/``noise`` drive the SDE variants.

        With ``variance_type`` set and epsilon prediction, the model output may carry the
        predicted variance as extra channels; the first ``x.shape[1]`` channels are used.
        """
        if self.variance_type is not None and self.prediction_type == "epsilon":
            if jnp.ndim(model_output) < 2 or jnp.ndim(x) < 2:
                raise ValueError(
                    f"variance_type={self.variance_type!r} splits the model output along a channel "
                    f"axis (batch, channels, ...); got model_output shape "
                    f"{jnp.shape(model_output)} and sample shape {jnp.shape(x)}"
                )
            model_output = model_output[:, : jnp.shape(x)[1]]
        return super().step(state, model_output, t, x, key=key, noise=noise)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPMSolverMultistepScheduler(_DPMBase):
    """DPM-Solver / DPM-Solver++ multistep sampling, diffusers' ``DPMSolverMultistepScheduler``
    with its options and defaults.

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
    #: jaxsched extension: third-order weights exact for quadratic predictions (README).
    exact_third_order: bool = False

    inverse_class_name: ClassVar[str] = "DPMSolverMultistepInverseScheduler"
    extension_options: ClassVar[tuple[str, ...]] = ("exact_third_order",)
    direction_only_options: ClassVar[tuple[str, ...]] = ("final_sigmas_type",)

    def _validate(self) -> None:
        super()._validate()
        check_bool("use_lu_lambdas", self.use_lu_lambdas)
        check_bool("use_dynamic_shifting", self.use_dynamic_shifting)
        check_bool("exact_third_order", self.exact_third_order)
        check_choice("final_sigmas_type", self.final_sigmas_type, FINAL_SIGMAS_TYPES)
        check_choice("time_shift_type", self.time_shift_type, ("exponential",))
        if not self.algorithm_type.endswith("++") and self.final_sigmas_type == "zero":
            raise ValueError(
                f"final_sigmas_type='zero' is not supported with algorithm_type="
                f"{self.algorithm_type!r}; use final_sigmas_type='sigma_min'"
            )

    def sigma_grid(self, schedule: NoiseSchedule, num_inference_steps, timesteps, flow_shift):
        """``(timesteps (N,) int, sigmas (N + 1,))`` as diffusers' ``set_timesteps`` builds them.

        ``sigmas`` are ``sqrt((1 - a) / a)`` (flow sigmas in ``[0, 1]`` with
        ``use_flow_sigmas``), the last one the final sigma.
        """
        xp, _, train_sigmas, log_sigmas, lambdas = self._training_sigmas(schedule, flow_shift)
        n = num_inference_steps
        if sigma_spacing(self) is not None:
            sigmas, ts = self._spaced_sigmas(
                n,
                xp,
                train_sigmas,
                log_sigmas,
                flow_shift,
                ascending=False,
                round_karras=self.beta_schedule != "squaredcos_cap_v2",
            )
        else:
            ts = self._descending_timesteps(n, timesteps, self._last_timestep(lambdas, xp))
            sigmas = self._sigmas_at(ts, xp, train_sigmas)
        final = train_sigmas[0] if self.final_sigmas_type == "sigma_min" else 0.0
        sigmas = xp.concatenate([sigmas, xp.asarray([final], sigmas.dtype)])
        return self._finish_grid(ts, sigmas, xp, schedule.alphas_cumprod.dtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPMSolverMultistepInverseScheduler(_DPMBase):
    """DPM-Solver inversion (data -> noise), diffusers' ``DPMSolverMultistepInverseScheduler``
    with its options and defaults.

    The same update walked toward noise on an ascending grid. Differences from diffusers (see
    the README): every one of the ``N`` steps runs, with timesteps and sigmas aligned (diffusers
    drops repeated timesteps but not their sigmas); flow sigmas ascend; SDE algorithms are
    rejected, since a stochastic solver has no deterministic inverse (diffusers' are NaN).
    """

    #: jaxsched extension: third-order weights exact for quadratic predictions (README).
    exact_third_order: bool = False

    walks_toward_noise: ClassVar[bool] = True
    inverse_class_name: ClassVar[str] = "DPMSolverMultistepScheduler"
    extension_options: ClassVar[tuple[str, ...]] = ("exact_third_order",)

    sigma_grid = MultistepScheduler.inverse_sigma_grid

    def coefficients(self, sigmas: jax.Array, begin_index: int = 0) -> MultistepCoefficients:
        """The forward tables on the ascending grid; a ``++`` grid must start above sigma 0.

        From ``sigma_s = 0`` (``beta_start=0``) the data-prediction step ``(sigma_t /
        sigma_s) x + ...`` is ``inf - inf``: diffusers returns NaN. That step needs the noise
        prediction, which only the noise-form algorithm carries, so it raises (concrete grid)
        or fails :func:`jaxsched.checked` (traced grid).
        """
        if self.algorithm_type.endswith("++"):
            start = concrete_value(sigmas[0])
            message = (
                f"the inverse grid starts at sigma = 0 (alphas_cumprod = 1, e.g. beta_start=0), "
                f"where {self.algorithm_type!r} is undefined (sigma_t / 0); invert with "
                "algorithm_type='dpmsolver', DDIMInverseScheduler or DEISMultistepInverseScheduler"
            )
            if start is None:
                checkify.debug_check(sigmas[0] > 0, message)
            elif start <= 0:
                raise ValueError(message)
        return super().coefficients(sigmas, begin_index)

    def _inverse_needs(self) -> dict[str, Any]:
        """Noise-form algorithms need the forward grid to end at ``sigma_min`` (a zero final
        sigma is NaN for them), the level this grid starts from."""
        return {} if self.algorithm_type.endswith("++") else {"final_sigmas_type": "sigma_min"}

    def _validate(self) -> None:
        super()._validate()
        check_bool("exact_third_order", self.exact_third_order)
        if self.algorithm_type.startswith("sde"):
            raise ValueError(
                f"algorithm_type={self.algorithm_type!r} cannot invert: an SDE step toward noise "
                "would need a negative noise variance sigma_t^2 (1 - e^(-2h)) with h < 0, and a "
                "stochastic step has no deterministic inverse (its natural counterpart, the "
                "forward diffusion, ignores the model). Invert with 'dpmsolver++' or 'dpmsolver' "
                "(the probability-flow ODE), or noise data with jaxsched.add_noise"
            )
