"""What DPM-Solver, DEIS and UniPC share, tested once for every multistep family: diffusers'
signatures, the trailing grid, dynamic shifting, and jit / vmap / scan equivalence."""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings

import chex
import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import SHAPE, run_multistep_side_by_side

import jaxsched

FORWARD = ["DPMSolverMultistepScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler"]
TOL = 5e-5


@pytest.mark.parametrize("name", [*FORWARD, "DPMSolverMultistepInverseScheduler"])
def test_options_and_defaults_are_diffusers_signature(name):
    cls = getattr(jaxsched, name)
    ours = {
        f.name: f.default for f in dataclasses.fields(cls) if f.name not in cls.extension_options
    }
    params = inspect.signature(getattr(diffusers, name).__init__).parameters
    # A list default (UniPC's disable_corrector) is a tuple here: options are hashable.
    theirs = {k: p.default for k, p in params.items() if k != "self"}
    assert ours == {k: tuple(v) if isinstance(v, list) else v for k, v in theirs.items()}


@pytest.mark.parametrize("name", FORWARD)
def test_trailing_spurious_step_is_dropped(name):
    """N=61 trailing: diffusers has 62 timesteps, the last -1 (an invalid model timestep);
    jaxsched has the 61 asked for and its first 60 steps equal diffusers' (the 61st ends at the
    final sigma instead of detouring through t = -1)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = getattr(diffusers, name)(timestep_spacing="trailing")
    ref.set_timesteps(61)
    assert len(ref.timesteps) == 62 and int(ref.timesteps[-1]) == -1
    state = getattr(jaxsched, name)(timestep_spacing="trailing").init(61, SHAPE)
    assert state.num_inference_steps == 61
    steps = run_multistep_side_by_side(
        {"timestep_spacing": "trailing"}, 61, cls_name=name, steps=60
    )
    for i, x, x_ref, *_ in steps:
        np.testing.assert_allclose(x, x_ref, rtol=TOL, atol=TOL, err_msg=f"sample, step {i}")


@pytest.mark.parametrize("name", FORWARD[:2])
def test_dynamic_shifting_mu_sets_the_flow_shift(name):
    flow = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
    config = {**flow, "use_dynamic_shifting": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = getattr(diffusers, name)(**config)
    ref.set_timesteps(12, mu=0.8)
    cls = getattr(jaxsched, name)
    sched = cls(**config)
    state = sched.init(12, SHAPE, mu=0.8)
    np.testing.assert_array_equal(state.timesteps, ref.timesteps.numpy())
    shifted = cls(**config, flow_shift=math.exp(0.8))
    chex.assert_trees_all_close(
        state.coefficients, shifted.init(12, SHAPE).coefficients, rtol=1e-6, atol=1e-7
    )
    # A traced mu builds the grid in float32 JAX: 1 - s cancels near s = 1, which DEIS's
    # a = alpha_t / alpha_s carries relatively (measured 1.3e-4); DPM-Solver's weights do not.
    traced = jax.jit(lambda mu: sched.init(12, SHAPE, mu=mu).coefficients)(0.8)
    rtol = 2e-4 if name.startswith("DEIS") else 1e-5
    chex.assert_trees_all_close(traced, state.coefficients, rtol=rtol, atol=1e-6)
    with pytest.raises(ValueError, match="mu is only used with use_dynamic_shifting=True"):
        cls(**flow).init(12, SHAPE, mu=0.8)


@pytest.mark.parametrize(
    "sched",
    [
        jaxsched.DPMSolverMultistepScheduler(solver_order=3),
        jaxsched.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_type="heun"),
        jaxsched.DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver", final_sigmas_type="sigma_min", thresholding=True
        ),
        jaxsched.DEISMultistepScheduler(solver_order=3),
        jaxsched.DEISMultistepScheduler(thresholding=True, prediction_type="v_prediction"),
        jaxsched.DEISMultistepInverseScheduler(solver_order=3),
        jaxsched.DEISMultistepInverseScheduler(thresholding=True, prediction_type="v_prediction"),
        jaxsched.UniPCMultistepScheduler(solver_order=3, disable_corrector=[2]),
        jaxsched.UniPCMultistepScheduler(predict_x0=False, solver_type="bh1"),
        jaxsched.UniPCMultistepInverseScheduler(thresholding=True, prediction_type="sample"),
    ],
    ids=lambda s: (
        f"{type(s).__name__}-{getattr(s, 'algorithm_type', s.solver_type)}-{s.solver_order}"
        f"-{s.thresholding}"
    ),
)
def test_scan_jit_and_vmap_agree_with_eager_steps(sched):
    n = 9
    state = sched.init(n, SHAPE)
    x = jax.random.normal(jax.random.key(3), SHAPE)
    noises = jax.random.normal(jax.random.key(4), (n, *SHAPE))
    stochastic = getattr(sched, "algorithm_type", "").startswith("sde")

    def model(x, t):
        return 0.5 * x + 1e-3 * t.astype(x.dtype)

    eager_state, eager = state, x
    for i in range(n):
        t = eager_state.timesteps[i]
        extra = {"noise": noises[i]} if stochastic else {}
        eager_state, eager = sched.step(eager_state, model(eager, t), t, eager, **extra)
    kwargs = {"noise": noises} if stochastic else {}
    run = jax.jit(lambda s, x: jaxsched.sample(sched, s, model, x, return_state=True, **kwargs))
    final_state, scanned = run(state, x)
    chex.assert_trees_all_close(scanned, eager, rtol=1e-5, atol=1e-5)
    # x0 = (x - sigma eps) / alpha: at an inverse run's noisiest level 1 / alpha (~14 here)
    # amplifies the rounding differences of the fused and the eager step.
    chex.assert_trees_all_close(final_state, eager_state, rtol=1e-4, atol=1e-4)
    both = jax.vmap(lambda x: jaxsched.sample(sched, state, model, x, **kwargs))(jnp.stack([x, x]))
    chex.assert_trees_all_close(both[1], eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FORWARD)
def test_vmap_over_schedules_matches_concrete_runs_without_retracing(name):
    sched = getattr(jaxsched, name)(use_karras_sigmas=True, solver_order=3)
    traces = []

    @jax.jit
    def run(beta_ends, x):
        traces.append(1)
        schedules = jax.vmap(lambda b: jaxsched.noise_schedule(beta_end=b))(beta_ends)
        states = jax.vmap(lambda s: sched.init(10, SHAPE, schedule=s))(schedules)
        return jax.vmap(lambda s: jaxsched.sample(sched, s, lambda x, t: 0.5 * x, x))(states)

    x = jax.random.normal(jax.random.key(5), SHAPE)
    ends = jnp.linspace(0.015, 0.025, 4)
    got = run(ends, x)
    for i in range(4):
        one = sched.init(10, SHAPE, schedule=jaxsched.noise_schedule(beta_end=float(ends[i])))
        expected = jaxsched.sample(sched, one, lambda x, t: 0.5 * x, x)
        chex.assert_trees_all_close(got[i], expected, rtol=1e-4, atol=1e-4)
    run(ends * 1.01, x)
    assert len(traces) == 1
