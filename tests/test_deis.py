"""DEISMultistepScheduler against diffusers, step by step, plus what diffusers lacks: weights
without cancellation, the zero-length-last-step fix and the DEIS inverse."""

from __future__ import annotations

import dataclasses
import math
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
    round_trip_error,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad

import jaxsched
from jaxsched.analytic import (
    epsilon_model,
    optimal_epsilon,
    probability_flow,
    random_mixture,
    sample_at_grid_levels,
)
from jaxsched.solvers.deis import deis_step_weights

CLS = "DEISMultistepScheduler"
INVERSE = "DEISMultistepInverseScheduler"
DEIS_UPDATES = (
    "deis_first_order_update",
    "multistep_deis_second_order_update",
    "multistep_deis_third_order_update",
)
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
# float32 against stock diffusers (its weights cancel: order 3 drifts as steps shrink) ...
TOL32 = {1: 5e-5, 2: 5e-5, 3: 3e-4}
# ... and float64 against diffusers' formulas run in float64 on the same grid. diffusers is
# told to count steps from the start (set_begin_index(0), as its pipelines do): it otherwise
# looks each step up by timestep value and overruns on repeated timesteps (cosine + karras).
TOL64 = 1e-9

CASES = [
    ({}, 1),
    ({}, 2),
    ({}, 10),
    ({"solver_order": 1}, 25),
    ({"solver_order": 2}, 200),
    ({"solver_order": 3}, 25),
    ({"solver_order": 3}, 50),
    ({"solver_order": 3}, 200),
    ({"solver_order": 3, **SD}, 30),
    ({"solver_order": 3, **SD}, 150),
    ({"solver_order": 3, "lower_order_final": False}, 8),
    ({"solver_order": 3, "use_karras_sigmas": True}, 20),
    ({"use_karras_sigmas": True, **SD}, 100),
    ({"solver_order": 3, "use_exponential_sigmas": True}, 15),
    ({"use_exponential_sigmas": True, **SD}, 50),
    ({"use_beta_sigmas": True}, 12),
    ({"solver_order": 3, "use_beta_sigmas": True}, 30),
    ({"solver_order": 3, **FLOW, "flow_shift": 3.0}, 20),
    ({**FLOW}, 1),
    ({"use_flow_sigmas": True, "prediction_type": "v_prediction", "solver_order": 3}, 12),
    ({"prediction_type": "flow_prediction", "solver_order": 3}, 10),
    ({"prediction_type": "sample", "timestep_spacing": "trailing"}, 25),
    (
        {
            "prediction_type": "v_prediction",
            "thresholding": True,
            "dynamic_thresholding_ratio": 0.9,
            "sample_max_value": 1.5,
        },
        20,
    ),
    ({"thresholding": True, "solver_order": 3}, 10),
    ({"timestep_spacing": "leading", "steps_offset": 1, **SD}, 50),
    ({"timestep_spacing": "leading", "beta_schedule": "squaredcos_cap_v2"}, 20),
    ({"timestep_spacing": "trailing", "solver_order": 3}, 7),
    ({"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True}, 25),
    ({"trained_betas": np.linspace(1e-4, 0.03, 1000).tolist(), "solver_order": 3}, 10),
    ({"num_train_timesteps": 500, "beta_end": 0.03, "solver_order": 3}, 40),
    ({"algorithm_type": "dpmsolver++", "solver_type": "midpoint"}, 10),
    ({"solver_order": 3, "use_exponential_sigmas": True}, 200),
]


def _case_id(case) -> str:
    config, n = case
    opts = ",".join(
        f"{k}={v}"
        for k, v in config.items()
        if k not in ("trained_betas", "beta_start", "beta_end")
    )
    return f"{n}-{opts or 'default'}{'-trained' if 'trained_betas' in config else ''}"


def _float32_comparable(config: dict, n: int) -> bool:
    """Ordinary step counts; and not diffusers' third order on beta sigmas, whose tiny end steps
    make its float32 weights cancel already at 5 steps (they agree in float64, below)."""
    third = config.get("solver_order", 2) == 3
    return n <= 50 and not (third and config.get("use_beta_sigmas") and n > 3)


@pytest.mark.parametrize("case", [c for c in CASES if _float32_comparable(*c)], ids=_case_id)
def test_float32_steps_match_diffusers(case):
    config, n = case
    tol = TOL32[config.get("solver_order", 2)]
    assert_multistep_matches_diffusers(config, n, tol, cls_name=CLS, begin_index=True)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_float64_steps_match_diffusers_formulas(case):
    config, n = case
    assert_multistep_matches_diffusers(
        config, n, TOL64, cls_name=CLS, float64=True, begin_index=True
    )


def test_case_matrix_covers_every_option():
    assert len(CASES) >= 25
    assert {n for _, n in CASES} >= {1, 2, 200}
    options = set().union(*(c[0] for c in CASES))
    fields = set(jaxsched.DEISMultistepScheduler().config)
    untested = fields - options
    # mu / dynamic shifting and time_shift_type are tested below, the extension too.
    assert untested <= {"use_dynamic_shifting", "time_shift_type", "repeat_final_sigma"}, untested


def test_inverse_has_the_forward_options_less_dynamic_shifting():
    """Every forward option but dynamic shifting (the forward options are diffusers'
    signature, tested in tests/test_multistep.py)."""
    inverse = {f.name for f in dataclasses.fields(jaxsched.DEISMultistepInverseScheduler)}
    assert inverse == set(jaxsched.DEISMultistepScheduler().config) - {
        "use_dynamic_shifting",
        "time_shift_type",
    }


@pytest.mark.parametrize("solver_order", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 14, 15, 30])
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_order_table_matches_diffusers(solver_order, n, lower_order_final):
    config = {"solver_order": solver_order, "lower_order_final": lower_order_final}
    state = jaxsched.DEISMultistepScheduler(**config).init(n, (1, 1))
    expected = diffusers_update_orders(CLS, config, n, DEIS_UPDATES)
    np.testing.assert_array_equal(state.coefficients.order, expected)


# -- the weights ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    order=st.integers(1, 3),
    log_rho_s0=st.floats(-4.0, 4.0),
    gaps=st.tuples(st.floats(0.01, 0.8), st.floats(0.01, 0.8)),
    step=st.floats(-1.5, 1.5).filter(lambda v: abs(v) > 1e-3),
    degree=st.integers(0, 2),
)
def test_weights_integrate_polynomials_in_log_rho_exactly(order, log_rho_s0, gaps, step, degree):
    """For noise predictions that are a polynomial of degree < order in log rho, one step is the
    exact solution of d(x / alpha) = eps d rho (checked against scipy's quadrature)."""
    if degree >= order:
        return
    with jax.enable_x64(True):
        direction = -1.0 if step < 0 else 1.0  # history lies behind the direction of travel
        nodes = [log_rho_s0, log_rho_s0 - direction * gaps[0]]
        nodes.append(nodes[1] - direction * gaps[1])
        log_t = log_rho_s0 + step
        weights = deis_step_weights(
            (jnp.ones(1), jnp.ones(1)),
            (jnp.exp(jnp.array([log_rho_s0])), jnp.exp(jnp.array([log_t]))),
            tuple(jnp.array([v]) for v in (log_t, *nodes)),
            jnp.array([order]),
        )

        def eps(ell):
            return (ell - 0.3) ** degree

        got = sum(float(w) * eps(v) for w, v in zip(weights.outputs[0], nodes, strict=True))
        exact, _ = quad(lambda ell: eps(ell) * math.exp(ell), log_rho_s0, log_t, epsabs=1e-13)
        assert float(weights.samples[0, 0]) == 1.0
        np.testing.assert_allclose(got, exact, rtol=1e-10, atol=1e-12)


def _diffusers_third_order_weights(rho_t, rho_s0, rho_s1, rho_s2):
    """diffusers' third-order DEIS weights: differences of its antiderivative (float32)."""
    logs = [np.log(np.float32(v)) for v in (rho_t, rho_s0, rho_s1, rho_s2)]

    def antiderivative(t, log_t, b, c, d):
        numerator = t * (c * (d - log_t + 1) - d * log_t + d + log_t**2 - 2 * log_t + np.float32(2))
        return numerator / ((b - c) * (b - d))

    lt, l0, l1, l2 = logs
    rt, r0 = np.float32(rho_t), np.float32(rho_s0)
    return [
        antiderivative(rt, lt, b, c, d) - antiderivative(r0, l0, b, c, d)
        for b, c, d in ((l0, l1, l2), (l1, l2, l0), (l2, l0, l1))
    ]


def _weights_on(sched, sigmas):
    """The DEIS weights of a chained grid over ``sigmas`` (model timesteps unused)."""
    grid = jaxsched.grids.chained(jnp.zeros(sigmas.shape[0] - 1), jaxsched.grids.vp_levels(sigmas))
    return sched.solver.tables(grid, 0).weights


def test_float32_weights_keep_their_precision_where_diffusers_cancel():
    """On the same float32 grid of 500 steps, diffusers' float32 third-order weights are off by
    percent; jaxsched's float32 weights are within 1e-4 of the exact (float64) ones (measured
    3e-5: the rounding of the float32 log-rho nodes, relative to the step, moves weight between
    the history terms; their sum, which multiplies the smooth part of eps, is exact)."""
    sched = jaxsched.DEISMultistepScheduler(solver_order=3)
    with jax.enable_x64(True):
        rho = np.asarray(sched.grid(500).sigmas, np.float32)
        exact = jax.tree.map(np.asarray, _weights_on(sched, jnp.asarray(rho, jnp.float64)))
    ours = _weights_on(sched, jnp.asarray(rho))
    assert ours.outputs.dtype == jnp.float32
    scale = np.abs(exact.outputs[:, 0])
    for k in range(3):
        error = np.abs(np.asarray(ours.outputs[:, k], np.float64) - exact.outputs[:, k])
        assert np.max(error / scale) < 1e-4, k
    i = 250  # a third-order step in the middle of the run
    theirs = _diffusers_third_order_weights(rho[i + 1], rho[i], rho[i - 1], rho[i - 2])
    alpha_t = 1.0 / math.sqrt(1.0 + float(rho[i + 1]) ** 2)
    relative = abs(alpha_t * float(theirs[0]) - exact.outputs[i, 0]) / abs(exact.outputs[i, 0])
    assert relative > 1e-2, relative  # measured 2e-1


# -- convergence on the analytic problem ------------------------------------------------------


def test_float32_third_order_keeps_converging_where_diffusers_diverges():
    """Default grid, SD schedule, exact model at diffusers' integer timesteps, 500 steps.
    Measured RMS error to the exact flow: jaxsched float32 5.2e-5 (= its float64 error);
    diffusers float32 2.1e-2, worse than its own 3.6e-3 at 100 steps."""
    n = 500
    with jax.enable_x64(True):
        mixture = random_mixture(jax.random.key(0), num_components=8, dim=16)
        x = np.asarray(jax.random.normal(jax.random.key(1), (64, 16), jnp.float64))
        sched = jaxsched.DEISMultistepScheduler(solver_order=3, **SD)
        sigmas = np.asarray(sched.grid(n).sigmas)
        exact = probability_flow(mixture, x, -np.log(sigmas[0]), -np.log(sigmas[-1]))
        best = jaxsched.sample(
            sched,
            sched.init(n, x.shape),
            epsilon_model(mixture, sched.noise_schedule()),
            jnp.asarray(x),
        )
        error64 = np.sqrt(np.mean((np.asarray(best) - exact) ** 2))
    mixture32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), mixture)
    model = epsilon_model(mixture32, sched.noise_schedule())
    ours = jaxsched.sample(sched, sched.init(n, x.shape), model, jnp.asarray(x, jnp.float32))
    error32 = np.sqrt(np.mean((np.asarray(ours, np.float64) - exact) ** 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = diffusers.DEISMultistepScheduler(solver_order=3, **SD)
    ref.set_timesteps(n)
    abar = ref.alphas_cumprod.numpy()
    x_ref = torch.from_numpy(x.astype(np.float32))
    for t in ref.timesteps:
        eps = optimal_epsilon(mixture32, jnp.asarray(x_ref.numpy()), abar[int(t)])
        x_ref = ref.step(torch.from_numpy(np.array(eps)), t, x_ref).prev_sample
    error_ref = np.sqrt(np.mean((x_ref.numpy().astype(np.float64) - exact) ** 2))
    assert error32 < 1.1 * error64, (error32, error64)
    assert error_ref > 10 * error32, (error_ref, error32)


STEPS = (50, 100, 200, 500)


def _at_levels(sched, n, mixture, x):
    out, sigmas = sample_at_grid_levels(sched, n, mixture, x)
    return np.asarray(out), np.asarray(sigmas)


def test_convergence_orders_in_float64():
    """RMS error per order and step count on log-rho-uniform grids (exponential sigmas with
    every step moving), against the probability-flow ODE solved by DOP853 to 1e-11. Measured
    fitted orders 1.57 / 1.87 / 2.68 over 50..500 steps; order 3 keeps converging to 500
    steps (4.7e-5 at 200, 3.3e-6 at 500)."""
    with jax.enable_x64(True):
        mixture = random_mixture(jax.random.key(0), num_components=8, dim=16)
        x = jax.random.normal(jax.random.key(1), (64, 16), jnp.float64)
        grid = {"use_exponential_sigmas": True, "repeat_final_sigma": False}
        _, sigmas = _at_levels(jaxsched.DEISMultistepScheduler(**grid), 4, mixture, x)
        exact = probability_flow(mixture, np.asarray(x), -np.log(sigmas[0]), -np.log(sigmas[-1]))
        errors = {}
        for order in (1, 2, 3):
            sched = jaxsched.DEISMultistepScheduler(solver_order=order, **grid)
            runs = [_at_levels(sched, n, mixture, x)[0] for n in STEPS]
            errors[order] = np.array([np.sqrt(np.mean((out - exact) ** 2)) for out in runs])
    for order, minimum in ((1, 0.9), (2, 1.8), (3, 2.5)):
        assert np.all(np.diff(errors[order]) < 0), errors
        fitted = -np.polyfit(np.log(STEPS), np.log(errors[order]), 1)[0]
        assert fitted >= minimum, (order, fitted, errors)
    at = dict(zip(STEPS, errors[3], strict=True))
    assert at[500] < at[200] / 5, errors
    assert errors[3][-1] < errors[2][-1] < errors[1][-1]


# -- the zero-length last step -----------------------------------------------------------------


@pytest.mark.parametrize(
    "spacing", ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas"]
)
def test_repeated_final_sigma_is_reproduced_and_can_be_fixed(spacing):
    config = {spacing: True, "solver_order": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = diffusers.DEISMultistepScheduler(**config)
    ref.set_timesteps(12)
    assert float(ref.sigmas[-1]) == float(ref.sigmas[-2])  # diffusers' wasted last call
    default = jaxsched.DEISMultistepScheduler(**config).init(12, SHAPE)
    weights = default.coefficients.weights
    assert float(weights.samples[-1, 0]) == 1.0 and float(weights.outputs[-1, 0]) == 0.0
    fixed_sched = jaxsched.DEISMultistepScheduler(**config, repeat_final_sigma=False)
    sigmas = fixed_sched.grid(12).sigmas
    assert bool(jnp.all(jnp.diff(sigmas) < 0))  # every step moves
    fixed = fixed_sched.init(12, SHAPE)
    assert fixed.num_inference_steps == 12
    assert not np.any(np.asarray(fixed.coefficients.weights.outputs[:, 0]) == 0.0)
    if spacing != "use_flow_sigmas":  # both end at the smallest training sigma
        np.testing.assert_allclose(float(sigmas[-1]), float(ref.sigmas[-1]), rtol=1e-6)


@pytest.mark.parametrize(
    "spacing", ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas"]
)
def test_fix_gives_the_next_step_count_for_one_model_call_less(spacing):
    """From 15 steps on (no lower-order final steps), ``repeat_final_sigma=False`` with N steps
    is diffusers' N + 1 step run without its wasted last call: same calls, same result."""
    fixed = jaxsched.DEISMultistepScheduler(**{spacing: True}, repeat_final_sigma=False)
    default = jaxsched.DEISMultistepScheduler(**{spacing: True})
    fixed_state, default_state = fixed.init(20, SHAPE), default.init(21, SHAPE)
    np.testing.assert_array_equal(fixed_state.timesteps, default_state.timesteps[:20])
    x = jax.random.normal(jax.random.key(8), SHAPE)

    def model(x, t):
        return 0.5 * x + 1e-4 * t.astype(x.dtype)

    got = jaxsched.sample(fixed, fixed_state, model, x)
    chex.assert_trees_all_close(got, jaxsched.sample(default, default_state, model, x))


# -- the inverse -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"timestep_spacing": "leading", "steps_offset": 1},
        {"timestep_spacing": "trailing", **SD},
        {"use_karras_sigmas": True},
        {"use_exponential_sigmas": True},
        {"use_beta_sigmas": True},
        {**FLOW, "flow_shift": 2.0},
    ],
)
def test_inverse_walks_the_dpm_solver_inverse_grid(config):
    deis = jaxsched.DEISMultistepInverseScheduler(**config)
    dpm = jaxsched.DPMSolverMultistepInverseScheduler(**config)
    ours = deis.grid(17)
    theirs = dpm.grid(17)
    chex.assert_trees_all_equal(ours, theirs)


@pytest.mark.parametrize("cls_name", [CLS, INVERSE])
def test_first_order_is_dpm_solver_first_order(cls_name):
    """DEIS's first order is DDIM in rho, as is DPM-Solver's (noise form): same steps."""
    dpm_name = cls_name.replace("DEISMultistep", "DPMSolverMultistep")
    extra = {} if "Inverse" in cls_name else {"final_sigmas_type": "sigma_min"}
    with jax.enable_x64(True):
        deis = getattr(jaxsched, cls_name)(solver_order=1, **SD)
        dpm = getattr(jaxsched, dpm_name)(solver_order=1, algorithm_type="dpmsolver", **SD, **extra)
        x = jax.random.normal(jax.random.key(2), SHAPE, jnp.float64)

        def model(x, t):
            return 0.4 * x + 1e-3 * t

        got = jaxsched.sample(deis, deis.init(20, SHAPE), model, x)
        expected = jaxsched.sample(dpm, dpm.init(20, SHAPE), model, x)
    chex.assert_trees_all_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [25, 50])
def test_round_trip_error_falls_with_order(n):
    """Invert data with the DEIS inverse, regenerate with DEIS (exact model, SD schedule).
    Measured at 25 / 50 steps: order 1 7.1e-2 / 4.7e-2, order 2 4.7e-2 / 2.4e-2, order 3
    3.2e-2 / 1.6e-2."""
    errors = [
        round_trip_error(jaxsched.DEISMultistepScheduler(**SD, solver_order=order), n)
        for order in (1, 2, 3)
    ]
    assert errors[0] > errors[1] > errors[2], errors


def test_inverse_keeps_shared_options():
    forward = jaxsched.DEISMultistepScheduler(
        solver_order=3, use_karras_sigmas=True, repeat_final_sigma=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inverse = forward.inverse()
    assert inverse == jaxsched.DEISMultistepInverseScheduler(
        solver_order=3, use_karras_sigmas=True, repeat_final_sigma=False
    )
    assert inverse.inverse() == forward
    with pytest.warns(UserWarning, match=r"has no option\(s\) \['use_dynamic_shifting'\]"):
        jaxsched.DEISMultistepScheduler(use_dynamic_shifting=True).inverse()


# -- options beyond the parity matrix -------------------------------------------------------


def test_custom_timesteps_are_an_extension():
    custom = [901, 700, 512, 300, 111, 20]
    sched = jaxsched.DEISMultistepScheduler()
    state = sched.init(None, SHAPE, timesteps=custom)
    np.testing.assert_array_equal(state.timesteps, custom)
    sigmas = sched.grid(timesteps=custom).sigmas
    train = np.sqrt(
        (1 - sched.noise_schedule().alphas_cumprod) / sched.noise_schedule().alphas_cumprod
    )
    np.testing.assert_allclose(sigmas, np.append(train[custom], train[0]), rtol=1e-6)
    with pytest.raises(ValueError, match="takes no custom timesteps"):
        jaxsched.DEISMultistepInverseScheduler().init(None, SHAPE, timesteps=custom)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"solver_order": 4}, "solver_order must be one of"),
        ({"algorithm_type": "sde-dpmsolver++"}, "algorithm_type must be one of"),
        ({"solver_type": "rk4"}, "solver_type must be one of"),
        ({"use_karras_sigmas": True, "use_exponential_sigmas": True}, "only one of"),
        ({"use_flow_sigmas": True, "use_beta_sigmas": True}, "cannot be combined"),
        ({"repeat_final_sigma": 0}, "repeat_final_sigma must be a bool"),
        ({"flow_shift": -1.0}, "flow_shift must lie in"),
        ({"time_shift_type": "linear"}, "time_shift_type must be one of"),
        ({"prediction_type": "eps"}, "prediction_type must be one of"),
        ({"timestep_spacing": "uniform"}, "timestep_spacing must be one of"),
    ],
)
def test_bad_options_are_rejected(config, fragment):
    with pytest.raises(ValueError, match=fragment):
        jaxsched.DEISMultistepScheduler(**config)


def test_dpm_solver_and_unipc_names_map_like_diffusers():
    sched = jaxsched.DEISMultistepScheduler(algorithm_type="dpmsolver++", solver_type="bh2")
    assert sched.algorithm_type == "deis" and sched.solver_type == "logrho"
    dpm_config = jaxsched.DPMSolverMultistepScheduler(solver_order=3, **SD).config
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error"
        )  # DPM-Solver's options are dropped quietly, as diffusers does
        converted = jaxsched.from_config(dpm_config, cls=CLS)
    assert converted == jaxsched.DEISMultistepScheduler(solver_order=3, **SD)


# -- transforms ---------------------------------------------------------------------------------


def test_low_precision_samples_keep_their_dtype():
    sched = jaxsched.DEISMultistepScheduler(solver_order=3)
    x = jax.random.normal(jax.random.key(7), SHAPE)
    full = jaxsched.sample(sched, sched.init(10, SHAPE), lambda x, t: 0.5 * x, x)
    half = jaxsched.sample(
        sched, sched.init(10, SHAPE, jnp.bfloat16), lambda x, t: 0.5 * x, x.astype(jnp.bfloat16)
    )
    assert half.dtype == jnp.bfloat16
    chex.assert_trees_all_close(half.astype(jnp.float32), full, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("solver_order", [1, 2, 3])
def test_inverse_from_a_zero_sigma_stays_finite(solver_order):
    """beta_start = 0 starts the inverse grid at sigma = 0 (x is data): the first step is the
    exact first-order step from there, and history at log rho = -inf lowers the order."""
    sched = jaxsched.DEISMultistepInverseScheduler(beta_start=0.0, solver_order=solver_order)
    state = sched.init(10, (1, 4))
    assert bool(
        jax.tree.reduce(
            lambda a, b: a & b, jax.tree.map(lambda w: jnp.isfinite(w).all(), state.coefficients)
        )
    )
    out = jaxsched.sample(sched, state, lambda x, t: 0.5 * x, jnp.ones((1, 4)))
    assert bool(jnp.isfinite(out).all())


def test_zero_final_sigma_stays_finite_where_diffusers_returns_nan():
    """beta_start = 0 puts the default grid's end at sigma = 0 (log rho = -inf); diffusers'
    weights are 0 * inf there. The exact limit is the x0 prediction."""
    for n, order in ((10, 1), (20, 3)):  # below 15 steps the last step is first order
        config = {"beta_start": 0.0, "solver_order": 3}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # diffusers' log(0)
            ref = diffusers.DEISMultistepScheduler(**config)
            ref.set_timesteps(n)
            x = torch.ones(1, 2)
            for t in ref.timesteps:
                x = ref.step(0.5 * x, t, x).prev_sample
        assert torch.isnan(x).all()
        sched = jaxsched.DEISMultistepScheduler(**config)
        state = sched.init(n, (1, 2))
        assert int(state.coefficients.order[-1]) == order
        final_state, out = jaxsched.sample(
            sched, state, lambda x, t: 0.5 * x, jnp.ones((1, 2)), return_state=True
        )
        assert bool(jnp.isfinite(out).all())
        if order == 1:
            chex.assert_trees_all_close(out, final_state.pred_original_sample, rtol=1e-6)
