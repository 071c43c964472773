"""DPMSolverMultistepInverseScheduler: parity with diffusers, and the cases where diffusers'
inverse is wrong (NaN, crash, silently fewer steps, flow sigmas walked toward data).

Tolerance: as tests/test_dpmsolver.py (float32, rtol = atol = 5e-5), growing linearly beyond 50
steps (float32 drift accumulates: 5.4e-5 after 66 steps of 3M on the SD schedule)."""

from __future__ import annotations

import warnings

import diffusers
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from _reference import SHAPE, assert_multistep_matches_diffusers, round_trip_error

import jaxsched

CLS = "DPMSolverMultistepInverseScheduler"
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
TOL = 5e-5

CASES = [
    ({}, 20),
    ({}, 1),
    ({"solver_order": 1}, 10),
    ({"solver_order": 3}, 25),
    ({**SD}, 50),
    ({**SD, "solver_order": 3}, 100),
    ({"solver_type": "heun"}, 20),
    ({"algorithm_type": "dpmsolver"}, 20),
    ({"algorithm_type": "dpmsolver", "solver_order": 3, "solver_type": "heun"}, 30),
    ({"use_karras_sigmas": True}, 12),
    ({"use_karras_sigmas": True, **SD}, 25),
    ({"use_exponential_sigmas": True}, 20),
    ({"use_beta_sigmas": True}, 20),
    ({"timestep_spacing": "leading", "steps_offset": 1}, 25),
    ({"timestep_spacing": "trailing"}, 25),
    ({"prediction_type": "v_prediction"}, 20),
    ({"prediction_type": "sample", "thresholding": True, "sample_max_value": 2.0}, 20),
    ({"lambda_min_clipped": -5.1, "beta_schedule": "squaredcos_cap_v2"}, 25),
    ({"euler_at_final": True, "solver_order": 3}, 20),
    ({"lower_order_final": False}, 10),
    ({"trained_betas": list(np.linspace(2e-4, 0.03, 1000) ** 1.1)}, 15),
    ({"variance_type": "learned"}, 8),
]


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=[
        f"{n}-"
        + ",".join(
            f"{k}={v}" for k, v in c.items() if k not in ("trained_betas", "beta_start", "beta_end")
        )
        for c, n in CASES
    ],
)
def test_every_step_matches_diffusers(case):
    config, n = case
    assert_multistep_matches_diffusers(config, n, TOL, cls_name=CLS)


def _diffusers_inverse(config, n):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = diffusers.DPMSolverMultistepInverseScheduler(**config)
    ref.set_timesteps(n)
    return ref


def _invert(config, n, x0):
    sched = jaxsched.DPMSolverMultistepInverseScheduler(**config)
    return sched, jaxsched.sample(sched, sched.init(n, x0.shape), lambda x, t: 0.5 * x, x0)


@pytest.mark.parametrize("algorithm_type", ["sde-dpmsolver", "sde-dpmsolver++"])
def test_sde_inversion_is_rejected_where_diffusers_returns_nan(algorithm_type):
    ref = _diffusers_inverse({"algorithm_type": algorithm_type}, 10)
    x = torch.ones(1, 2)
    out = ref.step(0.5 * x, ref.timesteps[0], x, variance_noise=torch.zeros(1, 2)).prev_sample
    assert torch.isnan(out).all()
    with pytest.raises(ValueError, match="cannot invert: an SDE step toward noise"):
        jaxsched.DPMSolverMultistepInverseScheduler(algorithm_type=algorithm_type)
    final = "zero" if algorithm_type.endswith("++") else "sigma_min"
    forward = jaxsched.DPMSolverMultistepScheduler(
        algorithm_type=algorithm_type, final_sigmas_type=final
    )
    with pytest.raises(ValueError, match="cannot invert"):
        forward.inverse()


def test_repeated_timesteps_keep_every_step():
    """Karras sigmas on the cosine schedule round to repeated timesteps: diffusers' inverse drops
    them but not their sigmas, so it silently runs fewer steps than asked, on misaligned sigmas.
    jaxsched runs all N, each with its own sigma."""
    config = {"use_karras_sigmas": True, "beta_schedule": "squaredcos_cap_v2"}
    ref = _diffusers_inverse(config, 20)
    assert len(ref.timesteps) < 20
    sched, out = _invert(config, 20, jnp.ones(SHAPE))
    state = sched.init(20, SHAPE)
    assert state.num_inference_steps == 20
    assert len(np.unique(np.asarray(state.timesteps))) == len(ref.timesteps)
    assert bool(jnp.all(jnp.diff(state.timesteps) >= 0))
    assert bool(jnp.isfinite(out).all())


def test_repeated_integer_timesteps_do_not_crash():
    """Exponential sigmas with 30 steps give float timesteps that truncate to repeats; diffusers'
    step-index lookup then overruns its sigmas (IndexError). The state's counter does not."""
    config = {"use_exponential_sigmas": True}
    ref = _diffusers_inverse(config, 30)
    x = torch.ones(1, 2)
    with pytest.raises(IndexError):
        for t in ref.timesteps:
            x = ref.step(0.5 * x, t, x).prev_sample
    sched, out = _invert(config, 30, jnp.ones((1, 2)))
    assert len(np.unique(np.asarray(sched.init(30, (1, 2)).timesteps))) < 30
    assert bool(jnp.isfinite(out).all())


def test_zero_length_last_step_is_a_no_op_not_nan():
    config = {"solver_order": 3, "use_karras_sigmas": True}
    ref = _diffusers_inverse(config, 20)
    x = torch.ones(1, 2)
    for t in ref.timesteps:
        x = ref.step(0.5 * x, t, x).prev_sample
    assert torch.isnan(x).all()
    sched, out = _invert(config, 20, jnp.ones((1, 2)))
    weights = sched.init(20, (1, 2)).coefficients.weights
    assert float(weights.samples[-1, 0]) == 1.0 and float(weights.outputs[-1, 0]) == 0.0
    assert bool(jnp.isfinite(out).all())


def test_flow_sigmas_ascend_toward_noise():
    """diffusers' inverse reuses the forward (descending) flow sigmas, so it walks toward data;
    jaxsched's walks toward noise, the reverse of the forward grid."""
    config = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 2.0}
    ref = _diffusers_inverse(config, 10)
    assert bool(torch.all(torch.diff(ref.timesteps) < 0))
    state = jaxsched.DPMSolverMultistepInverseScheduler(**config).init(10, SHAPE)
    forward = jaxsched.DPMSolverMultistepScheduler(**config).init(10, SHAPE)
    np.testing.assert_array_equal(state.timesteps, ref.timesteps.numpy()[::-1])
    assert bool(jnp.all(jnp.diff(state.timesteps) > 0))
    np.testing.assert_allclose(
        state.coefficients.start.sigma, forward.coefficients.start.sigma[::-1]
    )


@pytest.mark.parametrize("order", [1, 2, 3])
def test_round_trip_error_falls_with_steps(order):
    """Invert data with the inverse, regenerate with the forward scheduler (exact model)."""
    sched = jaxsched.DPMSolverMultistepScheduler(
        **SD, solver_order=order, final_sigmas_type="sigma_min"
    )
    errors = [round_trip_error(sched, n) for n in (10, 25, 50)]
    assert errors[0] > errors[1] > errors[2], errors


def test_inverse_keeps_shared_options_and_warns_only_about_meaningful_drops():
    forward = jaxsched.DPMSolverMultistepScheduler(
        solver_order=3, final_sigmas_type="sigma_min", exact_third_order=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # final_sigmas_type has no inverse meaning: no warning
        inverse = forward.inverse()
    assert inverse == jaxsched.DPMSolverMultistepInverseScheduler(
        solver_order=3, exact_third_order=True
    )
    with pytest.warns(UserWarning, match=r"has no option\(s\) \['use_lu_lambdas'\]"):
        jaxsched.DPMSolverMultistepScheduler(use_lu_lambdas=True).inverse()


@pytest.mark.parametrize("algorithm_type", ["dpmsolver", "dpmsolver++"])
def test_inverse_of_the_inverse_is_a_valid_forward_scheduler(algorithm_type):
    """A noise-form forward scheduler must end at sigma_min; inverse() sets that, so the round
    trip returns the scheduler it started from."""
    final = "zero" if algorithm_type.endswith("++") else "sigma_min"
    forward = jaxsched.DPMSolverMultistepScheduler(
        algorithm_type=algorithm_type, final_sigmas_type=final
    )
    assert forward.inverse().inverse() == forward
    inverse = jaxsched.DPMSolverMultistepInverseScheduler(algorithm_type=algorithm_type)
    assert inverse.inverse().inverse() == inverse
