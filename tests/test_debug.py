"""The checkify debug mode (:func:`jaxsched.checked`): the runtime checks concrete inputs get
at once also catch traced inputs under jit, vmap, scan and grad, and cost nothing outside it."""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import pytest
from jax.experimental import checkify

import jaxsched

SHAPE = (2, 3)
X = jnp.linspace(-1.0, 1.0, 6).reshape(SHAPE)
DPM = jaxsched.DPMSolverMultistepScheduler()
DDIM = jaxsched.DDIMScheduler()


def half(x, t):
    return 0.5 * x


def nan_below_500(x, t):
    return jnp.where(t < 500, jnp.nan, 0.5) * x


def jitted_sample(sched, model=half):
    return jax.jit(lambda state, x: jaxsched.sample(sched, state, model, x))


def finished(sched, n=10):
    state = sched.init(n, SHAPE)
    return jaxsched.sample(sched, state, half, X, return_state=True)[0]


def wrong_t_step():
    state = DPM.init(10, SHAPE)
    return jax.jit(DPM.step), (state, X, state.timesteps[3], X)


def finished_step():
    state = finished(DPM)
    return jax.jit(DPM.step), (state, X, state.timesteps[-1], X)


def finished_sample():
    return jitted_sample(DPM), (finished(DPM), X)


def nan_model_sample():
    return jitted_sample(DPM, nan_below_500), (DPM.init(10, SHAPE), X)


def nan_sample_step():
    state = DDIM.init(10, SHAPE)
    return jax.jit(DDIM.step), (state, X, state.timesteps[0], X.at[0, 0].set(jnp.inf))


def ddim_add_noise_out_of_range():
    return jax.jit(DDIM.add_noise), (DDIM.init(10, SHAPE), X, X, jnp.array([3, 1000]))


def continuous_add_noise_out_of_range():
    return jax.jit(jaxsched.add_noise), (jaxsched.noise_schedule(), X, X, jnp.array([-0.5, 3.0]))


def unordered_sigmas():
    return jax.jit(lambda s: DPM.init(None, SHAPE, sigmas=s).timesteps), (jnp.array([1.0, 3, 0]),)


def negative_sigma():
    inverse = jaxsched.DDIMInverseScheduler()
    grid = jnp.array([-1.0, 0.5, 2.0])
    return jax.jit(lambda s: inverse.init(None, SHAPE, sigmas=s).timesteps), (grid,)


def betas_above_one():
    return jax.jit(lambda b: jaxsched.noise_schedule(beta_end=b).betas), (2.0,)


def negative_eta():
    state = DDIM.init(10, SHAPE)
    t = state.timesteps[0]
    key = jax.random.key(0)
    return jax.jit(lambda eta: DDIM.step(state, X, t, X, eta=eta, key=key)[1]), (-0.5,)


def dpmsolver_pp_inversion_from_sigma_zero():
    inverse = jaxsched.DPMSolverMultistepInverseScheduler()

    def timesteps(beta_end):
        schedule = jaxsched.noise_schedule(beta_start=0.0, beta_end=beta_end)
        return inverse.init(10, SHAPE, schedule=schedule).timesteps

    return jax.jit(timesteps), (0.02,)


# (case, fragment of the message the checked call raises)
FAILURES = [
    (wrong_t_step, "t=699 is not the state's current timestep 999 (step 0)"),
    (finished_step, "has already taken all 10 steps"),
    (finished_sample, "has already taken all 10 steps"),
    (nan_model_sample, "model_output has non-finite values at step 6"),
    (nan_sample_step, "the sample has non-finite values at step 0"),
    (ddim_add_noise_out_of_range, "timesteps must lie in 0..999"),
    (continuous_add_noise_out_of_range, "timesteps must lie in 0..999"),
    (unordered_sigmas, "sigmas must be descending"),
    (negative_sigma, "sigmas must be finite and positive"),
    (betas_above_one, "betas must lie in [0, 1], got"),
    (negative_eta, "eta must lie in [0.0, 1.0], got -0.5"),
    (dpmsolver_pp_inversion_from_sigma_zero, "the inverse grid starts at sigma = 0"),
]


@pytest.mark.parametrize(("case", "message"), FAILURES, ids=[c.__name__ for c, _ in FAILURES])
def test_checked_reports_traced_problems_that_plain_jit_lets_through(case, message):
    fn, args = case()
    jax.block_until_ready(fn(*args))  # compiled as usual: the checks are dropped
    with pytest.raises(checkify.JaxRuntimeError, match=re.escape(message)):
        jaxsched.checked(fn)(*args)


@pytest.mark.parametrize("name", sorted(jaxsched.SCHEDULERS))
def test_checked_run_passes_and_equals_the_plain_run(name):
    sched = jaxsched.SCHEDULERS[name]()
    state = sched.init(8, SHAPE)
    run = jitted_sample(sched)
    chex.assert_trees_all_equal(jaxsched.checked(run)(state, X), run(state, X))


def test_resumed_run_past_its_end_under_jit_raises_no_false_alarm():
    """A traced mid-run state scans all N iterations; those past the end are masked and must
    not trip the position checks."""
    state = DPM.init(10, SHAPE)
    x = X
    for _ in range(4):
        t = state.timesteps[state.step_index]
        state, x = DPM.step(state, half(x, t), t, x)
    run = jitted_sample(DPM)
    nan_checks = checkify.user_checks | checkify.nan_checks
    chex.assert_trees_all_equal(jaxsched.checked(run, errors=nan_checks)(state, x), run(state, x))


def test_checks_hold_under_vmap_and_grad():
    """vmap keeps the checks; so does grad of a step. (JAX drops debug checks inside a
    differentiated ``lax.scan``, so a sampling loop is checked on its forward run.)"""
    state = DPM.init(10, SHAPE)
    batched = jax.jit(jax.vmap(lambda x: jaxsched.sample(DPM, state, nan_below_500, x)))
    with pytest.raises(checkify.JaxRuntimeError, match="model_output has non-finite values"):
        jaxsched.checked(batched)(jnp.stack([X, X]))
    t = state.timesteps[0]
    loss = jax.jit(jax.grad(lambda x: DPM.step(state, half(x, t), t, x)[1].sum()))
    jaxsched.checked(loss)(X)
    with pytest.raises(checkify.JaxRuntimeError, match="has non-finite values at step 0"):
        jaxsched.checked(loss)(X.at[1, 1].set(jnp.nan))


def test_checks_compile_away_outside_checked():
    state = DPM.init(10, SHAPE)
    hlo = jitted_sample(DPM).lower(state, X).compile().as_text()
    assert "is-finite" not in hlo
    assert "is-finite" in jax.jit(lambda x: jnp.isfinite(x).all()).lower(X).compile().as_text()
