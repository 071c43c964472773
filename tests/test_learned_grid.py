"""Custom sigma grids (``init(sigmas=...)``, continuous timesteps) and learned grids
(:mod:`jaxsched.learned_grid`) on the analytic Gaussian-mixture problem."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsched
from jaxsched import learned_grid
from jaxsched.analytic import epsilon_model, random_mixture
from jaxsched.grids import continuous_timesteps
from jaxsched.schedules import alphas_cumprod_at

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
X = jax.random.normal(jax.random.key(1), (4, 16))
MIXTURE = random_mixture(jax.random.key(0), num_components=8, dim=16)


def _builtin_sigmas(sched, state):
    """The sigma grid a built-in ``state`` walks: the levels of its DDIM tables, or the
    multistep grid."""
    return sched.grid(state.num_inference_steps).sigmas


BUILTIN = {
    "DDIM trailing": jaxsched.DDIMScheduler(**SD, clip_sample=False, timestep_spacing="trailing"),
    "DDIM inverse": jaxsched.DDIMInverseScheduler(**SD, timestep_spacing="trailing"),
    "DPM++ 2M": jaxsched.DPMSolverMultistepScheduler(**SD),
    "DPM++ 3M": jaxsched.DPMSolverMultistepScheduler(
        **SD, solver_order=3, final_sigmas_type="sigma_min"
    ),
    "DPM 2M noise form": jaxsched.DPMSolverMultistepScheduler(
        **SD, algorithm_type="dpmsolver", final_sigmas_type="sigma_min"
    ),
    "DPM++ 2M inverse": jaxsched.DPMSolverMultistepInverseScheduler(**SD),
    "DEIS 3": jaxsched.DEISMultistepScheduler(**SD, solver_order=3),
    "DEIS inverse": jaxsched.DEISMultistepInverseScheduler(**SD),
}


@pytest.mark.parametrize("name", list(BUILTIN))
def test_a_custom_grid_of_the_builtin_sigmas_reproduces_the_builtin_run(name):
    """Integer timesteps have integer continuous timesteps, so the model sees the same levels."""
    sched = BUILTIN[name]
    state = sched.init(10, X.shape)
    sigmas = _builtin_sigmas(sched, state)
    custom = sched.init(None, X.shape, sigmas=sigmas)
    model = epsilon_model(MIXTURE, sched.noise_schedule())
    assert jnp.issubdtype(custom.timesteps.dtype, jnp.floating)
    np.testing.assert_allclose(custom.timesteps, state.timesteps, atol=2e-3)
    chex.assert_trees_all_close(
        jaxsched.sample(sched, custom, model, X),
        jaxsched.sample(sched, state, model, X),
        rtol=2e-4,
        atol=2e-5,
    )


@settings(max_examples=30, deadline=None)
@given(sigma=st.floats(0.03, 14.0))
def test_continuous_timesteps_invert_alphas_cumprod_at(sigma):
    schedule = jaxsched.DPMSolverMultistepScheduler(**SD).noise_schedule()
    t = continuous_timesteps(jnp.asarray([sigma]), schedule.alphas_cumprod)
    abar = alphas_cumprod_at(schedule, t)
    np.testing.assert_allclose(abar, 1.0 / (1.0 + sigma**2), rtol=2e-5)


def test_add_noise_at_a_whole_float_timestep_equals_the_integer_one():
    schedule = jaxsched.noise_schedule(**{"kind": "scaled_linear", "beta_start": 0.00085})
    noise = jnp.ones_like(X)
    chex.assert_trees_all_close(
        jaxsched.add_noise(schedule, X, noise, jnp.asarray(417.0)),
        jaxsched.add_noise(schedule, X, noise, jnp.asarray(417)),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match=r"0\.\.999"):
        jaxsched.add_noise(schedule, X, noise, jnp.asarray(999.5))


@pytest.mark.parametrize(
    ("sched", "kwargs", "match"),
    [
        (BUILTIN["DPM++ 2M"], {"num_inference_steps": 3, "sigmas": [2.0, 1.0]}, "exactly one"),
        (BUILTIN["DDIM trailing"], {"num_inference_steps": 3, "sigmas": [2.0, 0.0]}, "exactly"),
        (BUILTIN["DPM++ 2M"], {"sigmas": [1.0, 2.0, 0.0]}, "descending"),
        (BUILTIN["DPM++ 2M inverse"], {"sigmas": [2.0, 1.0]}, "ascending"),
        (BUILTIN["DPM++ 2M inverse"], {"sigmas": [0.0, 1.0]}, "positive"),
        (BUILTIN["DPM++ 2M"], {"sigmas": [2.0, 0.0, 0.0]}, "positive"),
        (BUILTIN["DPM 2M noise form"], {"sigmas": [2.0, 1.0, 0.0]}, "positive"),
        (BUILTIN["DDIM trailing"], {"sigmas": [2.0, -1.0]}, "positive"),
        (BUILTIN["DEIS 3"], {"sigmas": [2.0, np.inf, 1.0][::-1]}, "finite"),
        (BUILTIN["DPM++ 2M"], {"sigmas": [[2.0, 1.0]]}, "1-D"),
        (BUILTIN["DPM++ 2M"], {"sigmas": [2.0]}, "1-D"),
        (
            jaxsched.DPMSolverMultistepScheduler(use_karras_sigmas=True),
            {"sigmas": [2.0, 1.0]},
            "karras",
        ),
        (
            jaxsched.DPMSolverMultistepScheduler(use_flow_sigmas=True, use_dynamic_shifting=True),
            {"sigmas": [1.0, 0.5], "mu": 0.5},
            "mu",
        ),
    ],
)
def test_bad_custom_grids_raise_naming_the_problem(sched, kwargs, match):
    kwargs = {"num_inference_steps": None, **kwargs}
    if kwargs.get("sigmas") is not None:
        kwargs["sigmas"] = np.asarray(kwargs["sigmas"], np.float32)
    with pytest.raises(ValueError, match=match):
        sched.init(shape=X.shape, **kwargs)


def test_integer_sigmas_raise_type_error():
    with pytest.raises(TypeError, match="floating"):
        BUILTIN["DPM++ 2M"].init(None, X.shape, sigmas=jnp.asarray([3, 2, 0]))


@pytest.mark.parametrize("name", ["DDIM trailing", "DPM++ 2M", "DEIS 3"])
def test_sampling_is_jittable_and_vmappable_over_traced_grids(name):
    sched = BUILTIN[name]
    model = epsilon_model(MIXTURE, sched.noise_schedule())
    ends = learned_grid.grid_ends(sched)
    grids = jnp.stack([learned_grid.log_uniform_sigmas(6, ends), learned_grid.karras_grid(6, ends)])
    run = jax.jit(jax.vmap(lambda s: learned_grid.sample_on_grid(sched, model, s, X)))
    one_by_one = [learned_grid.sample_on_grid(sched, model, s, X) for s in grids]
    chex.assert_trees_all_close(run(grids), jnp.stack(one_by_one), rtol=1e-4, atol=1e-5)


def test_logits_and_sigmas_round_trip():
    ends = learned_grid.grid_ends(BUILTIN["DPM++ 2M"])
    logits = jax.random.normal(jax.random.key(3), (9,))
    sigmas = learned_grid.sigmas_from_logits(logits, ends)
    assert sigmas.shape == (10,) and float(sigmas[-1]) == 0.0
    np.testing.assert_allclose(sigmas[0], ends.sigma_max, rtol=1e-6)
    assert bool(jnp.all(jnp.diff(sigmas) < 0)) and float(sigmas[-2]) > float(ends.sigma_min)
    again = learned_grid.sigmas_from_logits(learned_grid.logits_from_sigmas(sigmas, ends), ends)
    np.testing.assert_allclose(again, sigmas, rtol=1e-4)


@pytest.fixture(scope="module")
def dpm_problem():
    """DPM++ 2M, 10 steps, a 32-D mixture; a grid fitted on 32 starting points and everything
    measured on 128 others against a 500-step solution."""
    sched = jaxsched.DPMSolverMultistepScheduler(**SD)
    mixture = random_mixture(jax.random.key(0), num_components=8, dim=32)
    model = epsilon_model(mixture, sched.noise_schedule())
    x_fit = jax.random.normal(jax.random.key(1), (32, 32))
    x_eval = jax.random.normal(jax.random.key(2), (128, 32))
    fit = learned_grid.learn_sigmas(sched, model, 10, x_fit, iterations=100)
    ends = learned_grid.grid_ends(sched)
    exact = learned_grid.sample_on_grid(
        sched, model, learned_grid.log_uniform_sigmas(500, ends), x_eval
    )
    return sched, model, fit, x_eval, exact


def _rms(a, b) -> float:
    return float(jnp.sqrt(jnp.mean((a - b) ** 2)))


def test_a_learned_grid_beats_uniform_and_karras_twice_over_at_10_steps(dpm_problem):
    """Measured: uniform 8.8e-2, karras 1.3e-2, learned 2.0e-3 (6x; float64 benchmark 6.5x)."""
    sched, model, fit, x_eval, exact = dpm_problem
    builtin = {
        name: _rms(jaxsched.sample(s, s.init(10, x_eval.shape), model, x_eval), exact)
        for name, s in (("uniform", sched), ("karras", sched.replace(use_karras_sigmas=True)))
    }
    learned = _rms(learned_grid.sample_on_grid(sched, model, fit.sigmas, x_eval), exact)
    assert learned < min(builtin.values()) / 2, (builtin, learned)


def test_fitting_lowers_the_loss_and_returns_a_valid_grid(dpm_problem):
    _, _, fit, _, _ = dpm_problem
    assert fit.sigmas.shape == (11,) and fit.losses.shape == (100,)
    assert bool(jnp.all(jnp.diff(fit.sigmas) < 0)) and float(fit.sigmas[-1]) == 0.0
    assert float(jnp.min(fit.losses)) < float(fit.initial_loss) / 2, fit


def test_a_learned_grid_serves_any_scheduler_and_survives_save_and_load(dpm_problem, tmp_path):
    sched, model, fit, x_eval, exact = dpm_problem
    path = learned_grid.save_sigmas(tmp_path / "grid.json", fit.sigmas, sched)
    sigmas, config = learned_grid.load_sigmas(path)
    np.testing.assert_allclose(sigmas, fit.sigmas, rtol=1e-7)
    assert jaxsched.from_config(config) == sched
    for other in (
        jaxsched.DDIMScheduler(**SD, clip_sample=False),
        jaxsched.DEISMultistepScheduler(**SD),
    ):
        state = other.init(None, x_eval.shape, sigmas=sigmas)
        out = jaxsched.sample(other, state, model, x_eval)
        assert bool(jnp.all(jnp.isfinite(out))) and _rms(out, exact) < 0.2


def test_loading_anything_else_raises(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    other = tmp_path / "config.json"
    jaxsched.DDIMScheduler().save_config(other)
    wrong_count = tmp_path / "count.json"
    wrong_count.write_text(
        json.dumps(
            {
                "format": learned_grid.GRID_FILE_FORMAT,
                "num_inference_steps": 3,
                "sigmas": [2.0, 1.0, 0.0],
                "scheduler": {},
            }
        )
    )
    no_sigmas = tmp_path / "no_sigmas.json"
    no_sigmas.write_text(json.dumps({"format": learned_grid.GRID_FILE_FORMAT}))
    for path, match in (
        (bad_json, "invalid JSON"),
        (other, "format"),
        (wrong_count, "match"),
        (no_sigmas, "needs 'sigmas'"),
    ):
        with pytest.raises(ValueError, match=match):
            learned_grid.load_sigmas(path)


def test_initial_sigmas_must_fit_the_step_budget():
    sched = BUILTIN["DPM++ 2M"]
    model = epsilon_model(MIXTURE, sched.noise_schedule())
    grid = learned_grid.log_uniform_sigmas(5, learned_grid.grid_ends(sched))
    with pytest.raises(ValueError, match="num_inference_steps \\+ 1 = 5"):
        learned_grid.learn_sigmas(sched, model, 4, X, initial_sigmas=grid, iterations=1)


@pytest.mark.parametrize(
    ("sched", "match"),
    [
        (jaxsched.DPMSolverMultistepInverseScheduler(), "forward scheduler"),
        (jaxsched.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"), "stochastic"),
        (jaxsched.DPMSolverMultistepScheduler(use_flow_sigmas=True), "flow"),
        (jaxsched.DDIMScheduler(rescale_betas_zero_snr=True), "finite sigma_max"),
    ],
)
def test_learning_rejects_schedulers_without_a_fixed_vp_target(sched, match):
    model = epsilon_model(MIXTURE, sched.noise_schedule())
    with pytest.raises(ValueError, match=match):
        learned_grid.learn_sigmas(sched, model, 4, X, iterations=1)
