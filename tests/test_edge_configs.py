"""Edge configurations stay finite, including those where diffusers divides by zero: zero
terminal SNR with every prediction type (an epsilon prediction at alpha = 0), the inverse DDIM
starting at alphas_cumprod = 1 with a sample prediction (sigma = 0), 1 step, N = T, cosine
schedules with lambda_min_clipped, and every sigma spacing on every beta schedule."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import pytest

import jaxsched
from jaxsched.schedules import BETA_SCHEDULES

X = jax.random.normal(jax.random.key(0), (2, 3, 4))
PREDICTIONS = ("epsilon", "sample", "v_prediction")


def _model(x, t):
    """Any prediction type: a bounded function of the sample and the timestep."""
    return jnp.tanh(x) * (0.5 + t / 2000.0)


def _run_is_finite(sched, steps: int, **kwargs) -> bool:
    out = jaxsched.sample(sched, sched.init(steps, X.shape), _model, X, **kwargs)
    return bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize(
    ("cls", "prediction_type", "set_alpha_to_one"),
    list(
        itertools.product(
            (jaxsched.DDIMScheduler, jaxsched.DDIMInverseScheduler), PREDICTIONS, (True, False)
        )
    ),
)
def test_ddim_with_zero_terminal_snr_stays_finite(cls, prediction_type, set_alpha_to_one):
    for zero_snr, steps, spacing in itertools.product(
        (True, False), (1, 10, 1000), ("leading", "trailing", "linspace")
    ):
        sched = cls(
            prediction_type=prediction_type,
            set_alpha_to_one=set_alpha_to_one,
            rescale_betas_zero_snr=zero_snr,
            timestep_spacing=spacing,
            clip_sample=False,
        )
        assert _run_is_finite(sched, steps), (zero_snr, steps, spacing)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("solver_order", [1, 2, 3])
def test_multistep_with_zero_terminal_snr_stays_finite(prediction_type, solver_order):
    for spacing, steps in itertools.product((None, "karras"), (1, 2, 10, 1000)):
        options = {"use_karras_sigmas": True} if spacing else {}
        sched = jaxsched.DPMSolverMultistepScheduler(
            prediction_type=prediction_type,
            solver_order=solver_order,
            rescale_betas_zero_snr=True,
            **options,
        )
        assert _run_is_finite(sched, steps), (spacing, steps)


@pytest.mark.parametrize(
    "cls",
    [
        jaxsched.DPMSolverMultistepScheduler,
        jaxsched.DPMSolverMultistepInverseScheduler,
        jaxsched.DEISMultistepScheduler,
        jaxsched.DEISMultistepInverseScheduler,
    ],
)
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_every_sigma_spacing_on_every_beta_schedule_stays_finite(cls, beta_schedule):
    for spacing, steps in itertools.product(("karras", "exponential", "beta", None), (1, 25)):
        options = {f"use_{spacing}_sigmas": True} if spacing else {}
        sched = cls(beta_schedule=beta_schedule, solver_order=3, **options)
        assert _run_is_finite(sched, steps), (spacing, steps)


@pytest.mark.parametrize("lambda_min_clipped", [-5.1, -1.0])
@pytest.mark.parametrize("algorithm_type", ["dpmsolver++", "sde-dpmsolver++"])
def test_cosine_schedule_with_lambda_min_clipped_stays_finite(lambda_min_clipped, algorithm_type):
    sched = jaxsched.DPMSolverMultistepScheduler(
        beta_schedule="squaredcos_cap_v2",
        lambda_min_clipped=lambda_min_clipped,
        algorithm_type=algorithm_type,
    )
    for steps in (1, 10, 50):
        assert _run_is_finite(sched, steps, key=jax.random.key(1)), steps


@pytest.mark.parametrize(
    "sched",
    [
        jaxsched.DDIMScheduler(rescale_betas_zero_snr=True, clip_sample=False),
        jaxsched.DDIMInverseScheduler(prediction_type="sample", set_alpha_to_one=True),
    ],
)
def test_undetermined_predictions_have_finite_gradients(sched):
    state = sched.init(10, X.shape)
    grad = jax.grad(lambda x: jnp.sum(jaxsched.sample(sched, state, _model, x) ** 2))(X)
    assert bool(jnp.all(jnp.isfinite(grad)))
