"""Recompilation guards: an equal scheduler rebuilt any way shares the compiled program, and
sweeping the numbers that live in the state (betas, eta, thresholds, the flow shift) never
traces again. Traces and compilations are counted with ``jax.monitoring`` events."""

from __future__ import annotations

import collections
import contextlib
import warnings

import jax
import jax.numpy as jnp
import pytest
from jax import monitoring

import jaxsched
from jaxsched import Thresholds

SHAPE = (2, 4)
X = jnp.linspace(-1.0, 1.0, 8).reshape(SHAPE)
TRACE = "/jax/core/compile/jaxpr_trace_duration"
COMPILE = "/jax/core/compile/backend_compile_duration"
_EVENTS: collections.Counter | None = None


def _record(name: str, duration: float, **kwargs) -> None:
    if _EVENTS is not None:
        _EVENTS[name] += 1


monitoring.register_event_duration_secs_listener(_record)


@contextlib.contextmanager
def counting():
    """Count the traces and compilations that happen inside the block."""
    global _EVENTS
    _EVENTS = collections.Counter()
    try:
        yield _EVENTS
    finally:
        _EVENTS = None


def model(x, t):
    return jnp.tanh(x) * (0.5 + t / 2000)


CONFIGS = {
    "DDIMScheduler": {"clip_sample": False, "timestep_spacing": "trailing"},
    "DDIMInverseScheduler": {"set_alpha_to_one": False},
    "DPMSolverMultistepScheduler": {"solver_order": 3, "use_karras_sigmas": True},
    "DPMSolverMultistepInverseScheduler": {"algorithm_type": "dpmsolver"},
    "DEISMultistepScheduler": {"beta_schedule": "scaled_linear", "lower_order_final": False},
    "DEISMultistepInverseScheduler": {"solver_order": 2},
    "FlowMatchEulerDiscreteScheduler": {"shift": 3.0, "use_karras_sigmas": True},
    "FlowMatchEulerInverseScheduler": {"shift": 3.0},
    "FlowMatchHeunDiscreteScheduler": {"shift": 3.0},
    "UniPCMultistepScheduler": {"solver_order": 3, "disable_corrector": [1, 4]},
    "UniPCMultistepInverseScheduler": {"solver_type": "bh1"},
}


def test_every_registered_scheduler_has_a_recompilation_case():
    """A new family joins the registry and this table together."""
    assert set(CONFIGS) == set(jaxsched.SCHEDULERS)


def rebuilt_copies(sched) -> list:
    """Equal schedulers built every way a user might: constructor, config dict, JSON file
    round trip, ``replace()``, and ``inverse().inverse()``."""
    cls = type(sched)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [
            cls(**sched.config),
            jaxsched.from_config(sched.to_config()),
            jaxsched.from_config(dict(sched.config), cls=cls.__name__),
            sched.replace(),
            *([sched.inverse().inverse()] if cls.inverse_class_name else []),
        ]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_an_equal_rebuilt_scheduler_reuses_the_compiled_sample(name):
    sched = jaxsched.SCHEDULERS[name](**CONFIGS[name])
    run = jax.jit(lambda sched, state, x: jaxsched.sample(sched, state, model, x), static_argnums=0)
    state = sched.init(6, SHAPE)
    expected = run(sched, state, X)
    copies = rebuilt_copies(sched)
    states = [copy.init(6, SHAPE) for copy in copies]
    with counting() as events:
        outputs = [run(copy, s, X) for copy, s in zip(copies, states, strict=True)]
    assert events[TRACE] == 0 and events[COMPILE] == 0, events
    for copy, output in zip(copies, outputs, strict=True):
        assert copy == sched and hash(copy) == hash(sched)
        assert bool(jnp.all(output == expected))
    different = sched.replace(num_train_timesteps=999)
    with counting() as events:
        run(different, different.init(6, SHAPE), X)
    assert events[TRACE] >= 1  # the counter does see a real retrace


def test_ddim_sweep_over_betas_eta_and_thresholds_compiles_once():
    sched = jaxsched.DDIMScheduler(clip_sample=True, thresholding=True)

    @jax.jit
    def run(beta_start, beta_end, eta, clip_range, ratio, max_value, key):
        schedule = jaxsched.noise_schedule(beta_start=beta_start, beta_end=beta_end)
        state = sched.init(8, SHAPE, schedule=schedule)
        state = state._replace(thresholds=Thresholds(clip_range, ratio, max_value))
        return jaxsched.sample(sched, state, model, X, eta=eta, key=key)

    key = jax.random.key(0)
    sweep = [(1e-4, 0.02, 0.0, 1.0, 0.995, 1.0), (5e-4, 0.012, 0.5, 0.5, 0.9, 2.0)]
    sweep.append((2e-4, 0.03, 1.0, 2.0, 0.99, 0.5))
    sweep = [tuple(jnp.float32(v) for v in values) for values in sweep]
    run(*sweep[0], key)
    with counting() as events:
        outputs = [run(*values, key) for values in sweep[1:]]
    assert events[TRACE] == 0 and events[COMPILE] == 0, events
    assert not bool(jnp.allclose(outputs[0], outputs[1]))


def test_multistep_sweep_over_trained_betas_thresholds_and_flow_shift_compiles_once():
    sched = jaxsched.DPMSolverMultistepScheduler(thresholding=True)
    flow = jaxsched.DPMSolverMultistepScheduler(
        use_flow_sigmas=True, use_dynamic_shifting=True, prediction_type="flow_prediction"
    )

    @jax.jit
    def run(betas, ratio, max_value, mu):
        schedule = jaxsched.noise_schedule(trained_betas=betas)
        state = sched.init(8, SHAPE, schedule=schedule)
        state = state._replace(
            thresholds=state.thresholds._replace(
                dynamic_thresholding_ratio=ratio, sample_max_value=max_value
            )
        )
        shifted = flow.init(8, SHAPE, mu=mu)
        return jaxsched.sample(sched, state, model, X), jaxsched.sample(flow, shifted, model, X)

    def betas(end):
        return jnp.linspace(1e-4, end, 1000, dtype=jnp.float32)

    sweep = [(betas(0.02), 0.995, 1.0, 0.5), (betas(0.015), 0.9, 2.0, 1.2)]
    sweep.append((betas(0.025), 0.99, 0.7, -0.3))
    sweep = [(b, *(jnp.float32(v) for v in rest)) for b, *rest in sweep]
    run(*sweep[0])
    with counting() as events:
        outputs = [run(*values) for values in sweep[1:]]
    assert events[TRACE] == 0 and events[COMPILE] == 0, events
    assert not bool(jnp.allclose(outputs[0][0], outputs[1][0]))
    assert not bool(jnp.allclose(outputs[0][1], outputs[1][1]))


def test_a_jitted_step_serves_every_run_of_the_same_length():
    sched = jaxsched.DPMSolverMultistepScheduler(solver_order=2)
    step = jax.jit(sched.step)
    runs = [
        sched.init(5, SHAPE, schedule=jaxsched.noise_schedule(beta_end=e)) for e in (0.02, 0.03)
    ]
    inputs = [(s, model(X, s.timesteps[0]), s.timesteps[0]) for s in runs]
    step(inputs[0][0], inputs[0][1], inputs[0][2], X)
    with counting() as events:
        for state, output, t in inputs:
            state, x = step(state, output, t, X)
            step(state, model(x, state.timesteps[1]), state.timesteps[1], x)
    assert events[TRACE] == 0 and events[COMPILE] == 0, events
