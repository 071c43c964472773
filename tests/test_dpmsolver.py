"""DPMSolverMultistepScheduler: parity with diffusers, order tables, diffusers' failure cases,
transforms.

Tolerance (float32; diffusers casts every update to float32): rtol = atol = 5e-5. The tables
are bitwise equal to diffusers' (tests/test_schedules.py); the steps differ in rounding, since
jaxsched folds every order into one weighted sum and torch's float32 sqrt is not correctly
rounded. Differences grow with the step count, mostly diffusers' own float32 drift (measured
against a float64 reference, diffusers' 200-step 3M drifts 3.4e-5, jaxsched's 3.2e-6), so beyond
50 steps the tolerance scales with N / 50: ~1e-6 at 25 steps, 4.9e-5 at 200 (3M).
Converted outputs ``x0 = (x - sigma m) / alpha`` amplify sample differences by ``1 / alpha``, so
their tolerance is ``TOL / alpha`` (the cosine schedule's first levels have alpha ~ 0.01).
"""

from __future__ import annotations

import warnings

import chex
import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from _reference import (
    SHAPE,
    assert_multistep_matches_diffusers,
    diffusers_update_orders,
    run_multistep_side_by_side,
)

import jaxsched

CLS = "DPMSolverMultistepScheduler"
DPM_UPDATES = (
    "dpm_solver_first_order_update",
    "multistep_dpm_solver_second_order_update",
    "multistep_dpm_solver_third_order_update",
)
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
MIN = {"final_sigmas_type": "sigma_min"}
NOISE = {"algorithm_type": "dpmsolver", **MIN}
SDE_NOISE = {"algorithm_type": "sde-dpmsolver", **MIN}
TOL = 5e-5

CASES = [
    ({}, 20),
    ({}, 1),
    ({}, 2),
    ({"solver_order": 1}, 10),
    ({"solver_order": 3}, 25),
    ({"solver_order": 3}, 200),
    ({**SD}, 25),
    ({**SD, "solver_order": 3}, 50),
    ({"solver_type": "heun"}, 20),
    ({"solver_type": "heun", "solver_order": 3}, 50),
    ({**NOISE}, 20),
    ({**NOISE, "solver_order": 3}, 30),
    ({**NOISE, "solver_type": "heun"}, 20),
    ({**NOISE, "solver_order": 1}, 7),
    ({"algorithm_type": "sde-dpmsolver++"}, 20),
    ({"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}, 20),
    ({"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, 20),
    ({"algorithm_type": "sde-dpmsolver++", "solver_order": 1, **SD}, 15),
    ({**SDE_NOISE}, 20),
    ({**SDE_NOISE, "solver_type": "heun"}, 20),
    ({"use_karras_sigmas": True, **SD}, 25),
    ({"use_karras_sigmas": True, "solver_order": 3}, 10),
    ({"use_karras_sigmas": True, **MIN}, 12),
    ({"use_exponential_sigmas": True}, 25),
    ({"use_exponential_sigmas": True, **SD, "solver_type": "heun"}, 30),
    ({"use_beta_sigmas": True}, 25),
    ({"use_beta_sigmas": True, **NOISE}, 18),
    ({"use_lu_lambdas": True}, 30),
    ({"use_lu_lambdas": True, **SD, **MIN}, 14),
    ({"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}, 20),
    ({"use_flow_sigmas": True, "prediction_type": "flow_prediction", "solver_order": 3}, 28),
    ({"prediction_type": "flow_prediction"}, 10),
    ({"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, 25),
    ({"prediction_type": "v_prediction", **NOISE}, 20),
    ({"prediction_type": "sample", "timestep_spacing": "leading", "steps_offset": 1}, 25),
    ({"prediction_type": "sample", **NOISE, "solver_order": 3}, 16),
    ({"thresholding": True, "sample_max_value": 1.5, "prediction_type": "sample"}, 20),
    ({"thresholding": True, **NOISE, "dynamic_thresholding_ratio": 0.9}, 20),
    ({"thresholding": True, "algorithm_type": "sde-dpmsolver++"}, 12),
    ({"lambda_min_clipped": -5.1, "beta_schedule": "squaredcos_cap_v2"}, 25),
    ({"lambda_min_clipped": -3.0, "timestep_spacing": "leading"}, 20),
    (
        {
            "rescale_betas_zero_snr": True,
            "prediction_type": "v_prediction",
            "timestep_spacing": "trailing",
        },
        25,
    ),
    ({"euler_at_final": True}, 20),
    ({"euler_at_final": True, "solver_order": 3, **MIN}, 20),
    ({"lower_order_final": False}, 10),
    ({"lower_order_final": False, "solver_order": 3, **MIN}, 8),
    ({**MIN}, 20),
    ({"timestep_spacing": "trailing"}, 60),
    ({"beta_schedule": "squaredcos_cap_v2", "solver_order": 3}, 40),
    ({"trained_betas": list(np.linspace(2e-4, 0.03, 1000) ** 1.1)}, 20),
    ({"num_train_timesteps": 500, "timestep_spacing": "leading"}, 33),
    ({"variance_type": "learned_range"}, 10),
]


def _case_id(case) -> str:
    config, n = case
    opts = ",".join(
        f"{k}={v}"
        for k, v in config.items()
        if k not in ("trained_betas", "beta_start", "beta_end")
    )
    return f"{n}-{opts or 'default'}{'-trained' if 'trained_betas' in config else ''}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_every_step_matches_diffusers(case):
    config, n = case
    assert_multistep_matches_diffusers(config, n, TOL, cls_name=CLS)


def test_case_matrix_covers_every_option():
    assert len(CASES) >= 50
    options = set().union(*(c[0] for c in CASES))
    fields = set(jaxsched.DPMSolverMultistepScheduler().config)
    untested = fields - options
    # mu / dynamic shifting and time_shift_type are tested below; the beta range everywhere.
    assert untested <= {
        "use_dynamic_shifting",
        "time_shift_type",
        "num_train_timesteps",
        "exact_third_order",
    } | ({"beta_start", "beta_end"} - options), untested


@pytest.mark.parametrize("solver_order", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 14, 15, 30])
@pytest.mark.parametrize(
    "flags",
    [
        {},
        {"lower_order_final": False},
        {"euler_at_final": True},
        {**MIN},
        {"lower_order_final": False, **MIN},
    ],
    ids=["default", "no-lower-final", "euler-final", "sigma-min", "no-lower-final-sigma-min"],
)
def test_order_table_matches_diffusers(solver_order, n, flags):
    config = {"solver_order": solver_order, **flags}
    state = jaxsched.DPMSolverMultistepScheduler(**config).init(n, (1, 1))
    np.testing.assert_array_equal(
        state.coefficients.order, diffusers_update_orders(CLS, config, n, DPM_UPDATES)
    )


# -- where diffusers fails ---------------------------------------------------------------------


def _run(sched, n, key=0, x_shape=SHAPE):
    state = sched.init(n, x_shape)
    x = jax.random.normal(jax.random.key(key), x_shape)
    stochastic = sched.algorithm_type.startswith("sde")
    kwargs = {"key": jax.random.key(key + 1)} if stochastic else {}
    return jaxsched.sample(sched, state, lambda x, t: 0.5 * x, x, **kwargs)


@pytest.mark.parametrize(
    "spacing", ["use_karras_sigmas", "use_exponential_sigmas", "use_lu_lambdas"]
)
def test_zero_length_last_step_is_a_no_op_not_nan(spacing):
    """DPM++ 3M with sigma_min final sigma: the last step has h = 0; diffusers returns NaN."""
    config = {spacing: True, "solver_order": 3, **MIN}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = diffusers.DPMSolverMultistepScheduler(**config)
    ref.set_timesteps(20)
    x = torch.ones(1, 2)
    for t in ref.timesteps:
        x = ref.step(0.5 * x, t, x).prev_sample
    assert torch.isnan(x).all()
    sched = jaxsched.DPMSolverMultistepScheduler(**config)
    state = sched.init(20, (1, 2))
    weights = state.coefficients.weights  # the zero-length step is the identity
    assert float(weights.samples[-1, 0]) == 1.0
    assert float(jnp.abs(weights.outputs[-1, 0])) == 0.0
    assert bool(jnp.isfinite(_run(sched, 20, x_shape=(1, 2))).all())


@pytest.mark.parametrize("spacing", ["use_karras_sigmas", "use_exponential_sigmas"])
def test_cosine_schedule_with_repeated_first_timesteps(spacing):
    """Repeated first timesteps crash diffusers' step-index lookup; the state's step counter
    does not look timesteps up, and matches diffusers run with ``set_begin_index(0)``."""
    config = {spacing: True, "beta_schedule": "squaredcos_cap_v2", "solver_order": 3}
    state = jaxsched.DPMSolverMultistepScheduler(**config).init(25, SHAPE)
    assert len(set(np.asarray(state.timesteps[:5]).tolist())) < 5  # repeated timesteps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = diffusers.DPMSolverMultistepScheduler(**config)
    ref.set_timesteps(25)
    x = torch.zeros(SHAPE)
    with pytest.raises(IndexError):
        for t in ref.timesteps:
            x = ref.step(0.5 * x, t, x).prev_sample
    checked = 0
    for i, x, x_ref, *_ in run_multistep_side_by_side(config, 25, cls_name=CLS, begin_index=True):
        np.testing.assert_allclose(x, x_ref, rtol=TOL, atol=TOL, err_msg=f"sample, step {i}")
        checked += 1
    assert checked == 25


def test_third_order_sde_noise_form_runs():
    """diffusers has no third-order sde-dpmsolver update (it crashes); jaxsched derives it as
    twice the ODE weights, like the first and second orders."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = diffusers.DPMSolverMultistepScheduler(**SDE_NOISE, solver_order=3)
    ref.set_timesteps(10)
    x = torch.zeros(1, 2)
    with pytest.raises(UnboundLocalError):
        for t in ref.timesteps:
            x = ref.step(0.5 * x, t, x, variance_noise=torch.zeros(1, 2)).prev_sample
    sched = jaxsched.DPMSolverMultistepScheduler(**SDE_NOISE, solver_order=3)
    assert 3 in np.asarray(sched.init(10, (1, 2)).coefficients.order).tolist()
    assert bool(jnp.isfinite(_run(sched, 10)).all())


# -- options beyond the parity matrix -------------------------------------------------------


def test_custom_timesteps_match_diffusers():
    custom = [901, 700, 512, 300, 111, 20]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = diffusers.DPMSolverMultistepScheduler()
    ref.set_timesteps(timesteps=custom)
    state = jaxsched.DPMSolverMultistepScheduler().init(None, SHAPE, timesteps=custom)
    np.testing.assert_array_equal(state.timesteps, ref.timesteps.numpy())
    with pytest.raises(ValueError, match="custom timesteps cannot be used with karras sigmas"):
        jaxsched.DPMSolverMultistepScheduler(use_karras_sigmas=True).init(
            None, SHAPE, timesteps=custom
        )
    with pytest.raises(ValueError, match="exactly one of num_inference_steps, timesteps"):
        jaxsched.DPMSolverMultistepScheduler().init(5, SHAPE, timesteps=custom)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"solver_order": 4}, "solver_order must be one of"),
        ({"algorithm_type": "ddim"}, "algorithm_type must be one of"),
        ({"solver_type": "rk4"}, "solver_type must be one of"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "only one of"),
        ({"algorithm_type": "dpmsolver"}, "final_sigmas_type='zero' is not supported"),
        ({**NOISE, "prediction_type": "flow_prediction"}, "needs a data-prediction algorithm"),
        ({"final_sigmas_type": "max"}, "final_sigmas_type must be one of"),
        ({"use_flow_sigmas": True, "use_karras_sigmas": True}, "cannot be combined"),
        ({"use_flow_sigmas": True, "use_lu_lambdas": True}, "cannot be combined"),
        ({"variance_type": "fixed"}, "variance_type must be one of"),
        ({"flow_shift": 0.0}, "flow_shift must lie in"),
    ],
)
def test_bad_options_are_rejected(config, fragment):
    with pytest.raises(ValueError, match=fragment):
        jaxsched.DPMSolverMultistepScheduler(**config)


def test_deis_and_unipc_settings_map_like_diffusers():
    sched = jaxsched.DPMSolverMultistepScheduler(algorithm_type="deis", solver_type="logrho")
    assert sched.algorithm_type == "dpmsolver++" and sched.solver_type == "midpoint"


# -- transforms ---------------------------------------------------------------------------------


def test_traced_inverse_beta_grid_keeps_its_small_end():
    """Under vmap the grid runs in float32 JAX; the inverse beta grid avoids the cancellation
    of diffusers' formula there (9% off on the cosine schedule otherwise)."""
    sched = jaxsched.DPMSolverMultistepInverseScheduler(
        use_beta_sigmas=True, beta_schedule="squaredcos_cap_v2"
    )
    concrete = sched.init(20, SHAPE).coefficients.start.sigma
    traced = jax.jit(lambda s: sched.init(20, SHAPE, schedule=s).coefficients.start.sigma)(
        sched.noise_schedule()
    )
    chex.assert_trees_all_close(traced, concrete, rtol=1e-4)


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_learned_variance_channels_are_dropped(variance_type):
    """A model that also predicts its variance returns 2C channels; the first C are the noise."""
    sched = jaxsched.DPMSolverMultistepScheduler(variance_type=variance_type)
    plain = jaxsched.DPMSolverMultistepScheduler()
    state = sched.init(5, SHAPE)
    x = jax.random.normal(jax.random.key(6), SHAPE)
    eps = 0.3 * x
    with_variance = jnp.concatenate([eps, jnp.full_like(eps, 7.0)], axis=1)
    t = state.timesteps[0]
    _, got = sched.step(state, with_variance, t, x)
    _, expected = plain.step(plain.init(5, SHAPE), eps, t, x)
    chex.assert_trees_all_close(got, expected)


# Exact one-step means: (weight of x, kernel of the model integral over lambda in [s0, t]).
MEANS = {
    "dpmsolver++": (lambda a, s, at, st, h: st / s, lambda at, st, d: at * np.exp(-d)),
    "sde-dpmsolver++": (
        lambda a, s, at, st, h: st / s * np.exp(-h),
        lambda at, st, d: at * 2 * np.exp(-2 * d),
    ),
    "dpmsolver": (lambda a, s, at, st, h: at / a, lambda at, st, d: -st * np.exp(d)),
    "sde-dpmsolver": (lambda a, s, at, st, h: at / a, lambda at, st, d: -2 * st * np.exp(d)),
}


@pytest.mark.parametrize("algorithm_type", list(MEANS))
@pytest.mark.parametrize("exact", [True, False])
def test_exact_third_order_integrates_quadratic_predictions(algorithm_type, exact):
    """A third-order multistep step must integrate a model prediction that is quadratic in
    lambda exactly: its divided differences then equal D1 = h m', D2 = h^2 m'' / 2. diffusers'
    D2 weight (the reference DPM-Solver code's too) is half the needed one, so it is exact only
    for linear predictions; ``exact_third_order=True`` is exact for quadratics."""
    from scipy.integrate import quad

    with jax.enable_x64(True):
        sched = jaxsched.DPMSolverMultistepScheduler(
            algorithm_type=algorithm_type, solver_order=3, exact_third_order=exact, **MIN
        )
        coefficients = sched.init(20, (1,)).coefficients
        i = 8
        assert int(coefficients.order[i]) == 3
        grid = sched.grid(20).sigmas
        alpha = np.asarray(1.0 / np.sqrt(1.0 + grid**2))
        sigma = np.asarray(grid) * alpha
        lam = np.log(alpha / sigma)
        w = coefficients.weights
        x_weight_ours = float(w.samples[i, 0])
        output_weights = np.asarray(w.outputs[i])
        x_weight, kernel = MEANS[algorithm_type]
        lam_t, alpha_t, sigma_t = lam[i + 1], alpha[i + 1], sigma[i + 1]
        h = lam_t - lam[i]
        for degree, prediction in enumerate(
            (lambda v: 0.3 + 0 * v, lambda v: 0.3 - 0.7 * v, lambda v: 0.3 - 0.7 * v + 0.25 * v**2)
        ):
            x = 0.8
            integral = quad(
                lambda v, f=prediction: kernel(alpha_t, sigma_t, lam_t - v) * f(v),
                lam[i],
                lam_t,
                epsabs=1e-14,
                epsrel=1e-13,
            )[0]
            mean = x_weight(alpha[i], sigma[i], alpha_t, sigma_t, h) * x + integral
            ms = [prediction(lam[i - k]) for k in range(3)]
            step = x_weight_ours * x + float(np.dot(output_weights, ms))
            exact_here = np.isclose(step, mean, rtol=1e-10, atol=1e-13)
            # D2 vanishes for lines, so diffusers' weights are exact up to degree 1.
            assert exact_here == (exact or degree < 2), (degree, step, mean)


@pytest.mark.parametrize(
    ("config", "kwargs", "fragment"),
    [
        ({"use_exponential_sigmas": True, "beta_start": 0.0}, {}, "smallest sigma > 0"),
        ({"use_lu_lambdas": True, "beta_start": 0.0}, {}, "smallest sigma > 0"),
        ({"timestep_spacing": "leading", "steps_offset": 600}, {}, "timesteps must be non-empty"),
        ({}, {"timesteps": [1200, 10]}, r"timesteps must lie in 0\.\.999"),
        ({}, {"timesteps": [-5]}, r"timesteps must lie in 0\.\.999"),
        ({}, {"timesteps": []}, "timesteps must be a non-empty 1-D sequence"),
        ({"use_flow_sigmas": True}, {"timesteps": [900, 500]}, "cannot be used with flow sigmas"),
    ],
)
def test_bad_grids_are_rejected_at_init(config, kwargs, fragment):
    sched = jaxsched.DPMSolverMultistepScheduler(**config)
    n = None if "timesteps" in kwargs else 1
    with pytest.raises(ValueError, match=fragment):
        sched.init(n, SHAPE, **kwargs)


@pytest.mark.parametrize(
    "config",
    [
        {"use_lu_lambdas": True, "beta_schedule": "squaredcos_cap_v2"},
        {"use_lu_lambdas": True, "rescale_betas_zero_snr": True},
        {"use_karras_sigmas": True, "rescale_betas_zero_snr": True},
    ],
)
@pytest.mark.parametrize("n", [7, 25, 60])
def test_sigma_grids_equal_diffusers(config, n):
    """lu ends come from the float32 log-sigmas, and sigma_to_t takes the last training level
    below each sigma (zero-SNR makes the log-sigmas non-monotonic), as in diffusers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = diffusers.DPMSolverMultistepScheduler(**config)
    ref.set_timesteps(n)
    state = jaxsched.DPMSolverMultistepScheduler(**config).init(n, SHAPE)
    np.testing.assert_array_equal(state.timesteps, ref.timesteps.numpy())
