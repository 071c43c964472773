"""img2img: ``init(begin_index=k)`` against diffusers' ``set_timesteps(N)`` +
``set_begin_index(k)`` + ``add_noise(x0, noise, timesteps[k])`` + the loop over
``timesteps[k:]``, step by step, for every scheduler; and the strength helper against the
formula diffusers' img2img pipelines use."""

from __future__ import annotations

import warnings

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from _reference import DATA_STD, SHAPE, model_output

import jaxsched

TOL = 5e-5
CASES = [
    ("DDIMScheduler", {"beta_schedule": "scaled_linear", "clip_sample": False}),
    ("DPMSolverMultistepScheduler", {}),
    ("DPMSolverMultistepScheduler", {"solver_order": 3, "use_karras_sigmas": True}),
    (
        "DPMSolverMultistepScheduler",
        {
            "algorithm_type": "dpmsolver",
            "lower_order_final": False,
            "final_sigmas_type": "sigma_min",
        },
    ),
    ("DEISMultistepScheduler", {"solver_order": 3}),
    ("DEISMultistepScheduler", {"use_exponential_sigmas": True}),
    ("DPMSolverMultistepInverseScheduler", {"solver_order": 3}),
]
BEGIN = [0, 1, 4, 9]
N = 12


def _diffusers(cls_name: str, config: dict, begin: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = getattr(diffusers, cls_name)(**config)
    ref.set_timesteps(N)
    if hasattr(ref, "set_begin_index"):
        ref.set_begin_index(begin)
    return ref


def side_by_side(cls_name: str, config: dict, begin: int):
    """Yield ``(step, ours, theirs)`` samples: the noised start, then after every step."""
    ref = _diffusers(cls_name, config, begin)
    sched = jaxsched.from_config(dict(ref.config), cls=cls_name)
    state = sched.init(N, SHAPE, begin_index=begin)
    rng = np.random.default_rng(begin)
    x0 = (DATA_STD * rng.standard_normal(SHAPE)).astype(np.float32)
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    t_begin = ref.timesteps[begin : begin + 1]
    if "Inverse" in cls_name:  # resuming an inversion: no noise is added
        ours, theirs = jnp.asarray(x0), torch.from_numpy(x0)
    else:
        ours = sched.add_noise(state, x0, noise, state.timesteps[begin])
        theirs = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), t_begin)
    yield begin, np.asarray(ours), theirs.numpy()
    abar = ref.alphas_cumprod.numpy()
    step = jax.jit(sched.step)
    for i in range(begin, N):
        t = int(ref.timesteps[i])
        perturbation = 0.1 * rng.standard_normal(SHAPE).astype(np.float32)

        def model(x, t=t, perturbation=perturbation):
            return model_output(sched.prediction_type, x, abar[t], perturbation)

        theirs = ref.step(torch.from_numpy(model(theirs.numpy())), ref.timesteps[i], theirs)
        theirs = theirs.prev_sample
        state, ours = step(state, model(np.asarray(ours)), state.timesteps[i], ours)
        yield i + 1, np.asarray(ours), theirs.numpy()


@pytest.mark.parametrize("begin", BEGIN)
@pytest.mark.parametrize(("cls_name", "config"), CASES, ids=lambda c: str(c))
def test_begin_index_matches_diffusers_step_by_step(cls_name, config, begin):
    checked = 0
    for i, ours, theirs in side_by_side(cls_name, config, begin):
        np.testing.assert_allclose(ours, theirs, rtol=TOL, atol=TOL, err_msg=f"after step {i}")
        checked += 1
    assert checked == N - begin + 1


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "DEISMultistepScheduler"])
def test_the_first_step_run_is_first_order_and_the_final_rules_count_all_steps(name):
    sched = jaxsched.SCHEDULERS[name](solver_order=3)
    orders = np.asarray(sched.init(N, SHAPE, begin_index=5).coefficients.order)
    assert orders[5:].tolist() == [1, 2, 3, 3, 3, 2, 1]  # N < 15: lower_order_final
    plain = np.asarray(sched.init(N, SHAPE).coefficients.order)
    assert plain.tolist() == [1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 2, 1]


@pytest.mark.parametrize("name", sorted(jaxsched.SCHEDULERS))
def test_sample_from_a_begin_index_runs_the_remaining_steps_like_the_step_loop(name):
    sched = jaxsched.SCHEDULERS[name]()
    begin = 7 * sched.order  # the model call that begins step 7
    state = sched.init(N, SHAPE, begin_index=begin)
    x = jax.random.normal(jax.random.key(0), SHAPE)

    def model(x, t):
        return 0.1 * x + 0.01 * t / 1000

    looped = x
    for i in range(begin, state.num_inference_steps):
        t = state.timesteps[i]
        state, looped = sched.step(state, model(looped, t), t, looped)
    final, sampled = jaxsched.sample(
        sched, sched.init(N, SHAPE, begin_index=begin), model, x, return_state=True
    )
    assert int(final.step_index) == state.num_inference_steps
    np.testing.assert_allclose(sampled, looped, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strength", [0.05, 0.3, 0.5, 0.75, 0.8, 1.0])
@pytest.mark.parametrize("num_inference_steps", [10, 25, 50])
def test_strength_gives_the_begin_index_diffusers_pipelines_use(num_inference_steps, strength):
    """The formula of diffusers' img2img pipelines (``get_timesteps``)."""
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    if init_timestep == 0:
        with pytest.raises(ValueError, match="no step left to run"):
            jaxsched.begin_index_for_strength(
                jaxsched.DDIMScheduler(), num_inference_steps, strength
            )
        return
    t_start = max(num_inference_steps - init_timestep, 0)
    got = jaxsched.begin_index_for_strength(
        jaxsched.DPMSolverMultistepScheduler(), num_inference_steps, strength
    )
    assert got == t_start


def test_a_begin_index_outside_the_run_is_rejected():
    sched = jaxsched.DDIMScheduler()
    for bad in (-1, N, 2.5):
        with pytest.raises(ValueError, match="begin_index"):
            sched.init(N, SHAPE, begin_index=bad)
    with pytest.raises(ValueError, match="strength must lie in"):
        jaxsched.begin_index_for_strength(sched, N, 1.5)
