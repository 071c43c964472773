"""Speed: jaxsched's compiled loops against diffusers' Python loops and against the floor.

The work (issue 6): ``x`` of shape ``(16, 4, 64, 64)`` float32, the model ``0.1 * x``, the
Stable-Diffusion schedule, 25 steps. Every implementation runs in this one process, interleaved
round by round, and the median over rounds is reported (timings between processes on a shared
CPU differ by 2-4x; within a process they compare).

The floor is a jitted scan doing the least a solver of that order must: per step it reads
``x`` and the ``order - 1`` history buffers, applies the model and one fused update with
per-step scalar weights, and writes ``x`` and the history back. It runs with the scheduler's own
``scan_unroll``, so the two loops have the same structure and differ only in the step.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxsched

SHAPE = (16, 4, 64, 64)
STEPS = 25
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def model(x, t):
    """The benchmark's stand-in for a network: cheap and elementwise."""
    return 0.1 * x


#: (label, jaxsched scheduler, diffusers class name, history buffers the solver keeps)
CASES = (
    ("DPM++ 2M", jaxsched.DPMSolverMultistepScheduler(**SD), "DPMSolverMultistepScheduler", 1),
    (
        "DPM++ 3M",
        jaxsched.DPMSolverMultistepScheduler(**SD, solver_order=3),
        "DPMSolverMultistepScheduler",
        2,
    ),
    ("DEIS 2", jaxsched.DEISMultistepScheduler(**SD), "DEISMultistepScheduler", 1),
    ("DDIM", jaxsched.DDIMScheduler(**SD, clip_sample=False), "DDIMScheduler", 0),
    (
        "DDIM inverse",
        jaxsched.DDIMInverseScheduler(**SD, clip_sample=False),
        "DDIMInverseScheduler",
        0,
    ),
    (
        "DPM++ inverse",
        jaxsched.DPMSolverMultistepInverseScheduler(**SD),
        "DPMSolverMultistepInverseScheduler",
        1,
    ),
)


def jaxsched_runner(
    sched, steps: int = STEPS, shape=SHAPE, *, traced_state: bool = False
) -> Callable[[jax.Array], jax.Array]:
    """The whole loop as one jitted ``lax.scan``, the state built once outside the timing.

    By default the state is closed over, so its ``step_index`` is known when tracing and the
    scan runs exactly the remaining steps. With ``traced_state`` it is an argument of the jitted
    function instead, so ``sample`` must mask steps past the end (see its docstring).
    """
    state = sched.init(steps, shape)
    if traced_state:
        run = jax.jit(lambda state, x: jaxsched.sample(sched, state, model, x))
        return lambda x: run(state, x)
    return jax.jit(lambda x: jaxsched.sample(sched, state, model, x))


def diffusers_runner(cls_name: str, config: dict, steps: int = STEPS):
    """diffusers' normal loop: ``set_timesteps``, then ``step`` per timestep, in torch."""
    import diffusers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = getattr(diffusers, cls_name).from_config(config)

    def run(x):
        sched.set_timesteps(steps)
        for t in sched.timesteps:
            x = sched.step(0.1 * x, t, x).prev_sample
        return x

    return run


def floor_runner(
    history: int, steps: int = STEPS, unroll: int = 1
) -> Callable[[jax.Array], jax.Array]:
    """The minimal loop with a solver's memory traffic (``history`` extra buffers), as a
    ``lax.scan`` over per-step scalar weights, ``unroll`` steps per iteration."""
    weights = jnp.asarray(np.random.default_rng(0).uniform(0.1, 0.3, (steps, history + 2)))

    def body(carry, w):
        x, past = carry
        m = model(x, None)
        x_next = w[0] * x + w[1] * m
        for k, h in enumerate(past):
            x_next = x_next + w[k + 2] * h
        return (x_next, (m, *past[:-1]) if past else ()), None

    @jax.jit
    def run(x):
        past = tuple(jnp.zeros_like(x) for _ in range(history))
        return jax.lax.scan(body, (x, past), weights, unroll=unroll)[0][0]

    return run


def interleaved_medians(runners: dict[str, tuple[Callable, object]], rounds: int) -> dict:
    """Median wall time (ms) of each ``runner(arg)``, one call of each per round, after a
    warm-up call (compilation)."""
    for run, arg in runners.values():
        _block(run(arg))
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, (run, arg) in runners.items():
            start = time.perf_counter()
            _block(run(arg))
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def _block(out):
    return jax.block_until_ready(out) if isinstance(out, jax.Array) else out


def speed_table(rounds: int = 20) -> list[dict]:
    """One row per scheduler: jaxsched, diffusers and floor medians (ms per loop)."""
    import torch

    x = jax.random.normal(jax.random.key(0), SHAPE)
    x_torch = torch.from_numpy(np.array(x))
    rows = []
    for label, sched, cls_name, history in CASES:
        runners = {
            "jaxsched": (jaxsched_runner(sched), x),
            "jaxsched_traced_state": (jaxsched_runner(sched, traced_state=True), x),
            "diffusers": (diffusers_runner(cls_name, sched.to_config()), x_torch),
            "floor": (floor_runner(history, unroll=sched.scan_unroll), x),
        }
        ms = interleaved_medians(runners, rounds)
        rows.append(
            {
                "scheduler": label,
                "jaxsched_ms": ms["jaxsched"],
                "traced_state_ms": ms["jaxsched_traced_state"],
                "diffusers_ms": ms["diffusers"],
                "floor_ms": ms["floor"],
                "speedup_vs_diffusers": ms["diffusers"] / ms["jaxsched"],
                "vs_floor": ms["jaxsched"] / ms["floor"],
            }
        )
    return rows
