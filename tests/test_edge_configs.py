"""Edge configurations stay finite, including those where diffusers divides by zero: zero
terminal SNR with every prediction type (an epsilon prediction at alpha = 0), the inverse DDIM
starting at alphas_cumprod = 1 with a sample prediction (sigma = 0), 1 step, N = T, cosine
schedules with lambda_min_clipped, and every sigma spacing on every beta schedule."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
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


# -- degenerate steps: each was NaN (or silently wrong) before; the limits hold exactly --------


@pytest.mark.parametrize("algorithm_type", ["sde-dpmsolver++", "sde-dpmsolver"])
@pytest.mark.parametrize("spacing", ["use_karras_sigmas", "use_exponential_sigmas"])
def test_a_step_one_ulp_long_is_a_no_op_in_float64(algorithm_type, spacing):
    """The spacing's last sigma and sigma_min differ by one float64 ulp (computed two ways): a
    real step would take the root of a rounding-negative noise variance."""
    with jax.enable_x64(True):
        sched = jaxsched.DPMSolverMultistepScheduler(
            algorithm_type=algorithm_type, final_sigmas_type="sigma_min", **{spacing: True}
        )
        state = sched.init(10, X.shape)
        last = jax.tree.map(lambda w: np.asarray(w[-1]).tolist(), state.coefficients.weights)
        assert (last.samples, last.outputs, last.noise) == ([1.0], [0.0, 0.0], 0.0)
        assert _run_is_finite(sched, 10, key=jax.random.key(1))


@pytest.mark.parametrize("algorithm_type", ["dpmsolver++", "dpmsolver", "sde-dpmsolver"])
@pytest.mark.parametrize("solver_order", [1, 2, 3])
def test_a_step_to_a_zero_sigma_is_the_first_order_limit(algorithm_type, solver_order):
    """With beta_start = 0 the smallest training sigma is 0, so 'sigma_min' ends at sigma 0 too
    (h = inf): the last step lands on its x0 prediction (ODE forms), at every order."""
    sched = jaxsched.DPMSolverMultistepScheduler(
        beta_start=0.0,
        algorithm_type=algorithm_type,
        solver_order=solver_order,
        final_sigmas_type="sigma_min",
        lower_order_final=False,
    )
    state = sched.init(10, X.shape)
    assert int(state.coefficients.order[-1]) == 1
    kwargs = {"key": jax.random.key(1)} if algorithm_type.startswith("sde") else {}
    last, out = jaxsched.sample(sched, state, _model, X, return_state=True, **kwargs)
    assert bool(jnp.all(jnp.isfinite(out)))
    if not algorithm_type.startswith("sde"):
        assert jnp.allclose(out, last.pred_original_sample, atol=1e-5)


def test_stochastic_ddim_from_a_zero_snr_level_is_finite_compiled_and_eager():
    """eta = 1 from alphas_cumprod = 0: 1 - a_to - std^2 is 0 in exact arithmetic."""
    sched = jaxsched.DDIMScheduler(
        rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False
    )
    state = sched.init(10, X.shape)
    noise = jax.random.normal(jax.random.key(2), (10, *X.shape))
    compiled = jax.jit(lambda s, x: jaxsched.sample(sched, s, _model, x, eta=1.0, noise=noise))
    eager_state, eager = state, X
    for i in range(10):
        t = eager_state.timesteps[i]
        eager_state, eager = sched.step(
            eager_state, _model(eager, t), t, eager, eta=1.0, noise=noise[i]
        )
    out = compiled(state, X)
    assert bool(jnp.all(jnp.isfinite(out))) and bool(jnp.all(jnp.isfinite(eager)))
    assert jnp.allclose(out, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "cls", [jaxsched.DPMSolverMultistepScheduler, jaxsched.DEISMultistepScheduler]
)
def test_multistep_on_an_underflowing_schedule_is_finite(cls):
    """beta_end near 1 underflows alphas_cumprod to 0 in float32 (an infinite sigma)."""
    for beta_end in (0.5, 0.999):
        assert _run_is_finite(cls(beta_end=beta_end, timestep_spacing="trailing"), 50)


NO_LIMITS = {
    "DDIMScheduler": {"clip_sample": False},
    "DDIMInverseScheduler": {"clip_sample": False},
    # DPM-Solver++ cannot invert from sigma 0 (a clear error, tested elsewhere)
    "DPMSolverMultistepInverseScheduler": {"algorithm_type": "dpmsolver"},
}


@pytest.mark.parametrize(
    "name", sorted(n for n, c in jaxsched.SCHEDULERS.items() if c.training_levels == "vp")
)
def test_a_schedule_without_noise_leaves_the_sample_unchanged(name):
    """All-zero trained betas: every level is the data, every step has zero length."""
    options = NO_LIMITS.get(name, {})
    sched = jaxsched.SCHEDULERS[name](trained_betas=[0.0] * 1000, **options)
    assert jnp.allclose(jaxsched.sample(sched, sched.init(5, X.shape), _model, X), X)
