"""Convergence on an exact problem: Gaussian-mixture data, closed-form noise prediction, and the
probability-flow ODE solved to 1e-11 by scipy's DOP853 as ground truth (float64).

The ODE in lambda = log(alpha / sigma) is dx/dlambda = -alpha^2 x + alpha E[x0 | x]
(DPM-Solver++, eq. 4 with alpha^2 + sigma^2 = 1). The solvers call the model at diffusers'
rounded integer timesteps, as a real model is called, while their grid uses continuous sigmas.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsched
from jaxsched.analytic import epsilon_model, probability_flow, random_mixture

STEPS = (50, 100, 200)


def _grid_lambdas(sched, n):
    return -np.log(np.asarray(sched.grid(n).sigmas, np.float64))


def _fitted_order(errors) -> float:
    return -np.polyfit(np.log(STEPS), np.log(errors), 1)[0]


@pytest.fixture(scope="module")
def problem():
    with jax.enable_x64(True):
        mixture = random_mixture(jax.random.key(0), num_components=8, dim=16)
        x_start = np.asarray(jax.random.normal(jax.random.key(1), (64, 16), jnp.float64))
        sched = jaxsched.DPMSolverMultistepScheduler(
            use_lu_lambdas=True, final_sigmas_type="sigma_min"
        )
        lambdas = _grid_lambdas(sched, STEPS[0])
        for n in STEPS[1:]:  # log-SNR-uniform grids share their ends
            np.testing.assert_allclose(_grid_lambdas(sched, n)[[0, -1]], lambdas[[0, -1]])
        exact = probability_flow(mixture, x_start, lambdas[0], lambdas[-1])
    return mixture, x_start, exact


def _errors(problem, solver_order: int, exact_third_order: bool = False) -> np.ndarray:
    mixture, x_start, exact = problem
    with jax.enable_x64(True):
        sched = jaxsched.DPMSolverMultistepScheduler(
            solver_order=solver_order,
            use_lu_lambdas=True,
            final_sigmas_type="sigma_min",
            exact_third_order=exact_third_order,
        )
        model = epsilon_model(mixture, sched.noise_schedule())
        errors = []
        for n in STEPS:
            state = sched.init(n, x_start.shape)
            out = jaxsched.sample(sched, state, model, jnp.asarray(x_start))
            errors.append(float(np.sqrt(np.mean((np.asarray(out) - exact) ** 2))))
    return np.array(errors)


def test_dpm_solver_pp_2m_converges_at_second_order(problem):
    errors = _errors(problem, 2)
    assert np.all(np.diff(errors) < 0), errors
    assert _fitted_order(errors) >= 1.8, errors  # measured 1.83; diffusers: 1.83 on this problem


def test_dpm_solver_pp_3m_converges_where_diffusers_returns_nan(problem):
    """diffusers' 3M is NaN here (the zero-length last step of lu + sigma_min); the fitted order
    (measured 2.25) is limited by the model's rounded integer timesteps."""
    errors = _errors(problem, 3)
    assert np.all(np.isfinite(errors)) and np.all(np.diff(errors) < 0), errors
    assert _fitted_order(errors) >= 2.0, errors
    assert errors[-1] < _errors(problem, 2)[-1]


def test_exact_third_order_weights_converge_faster(problem):
    """diffusers' 3M halves the D2 weight; the exact weights (an opt-in extension) lower the
    error at every step count (measured order 2.51 vs 2.25; the rounded model timesteps cap
    both below 3)."""
    diffusers_like = _errors(problem, 3)
    exact = _errors(problem, 3, exact_third_order=True)
    assert np.all(exact < diffusers_like), (exact, diffusers_like)
    assert _fitted_order(exact) > _fitted_order(diffusers_like)
