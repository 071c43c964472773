"""Compile time, vmap over schedules, and the compiled loop's memory (issue 6 targets)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

import jaxsched
from benchmarks.speed import SD, SHAPE, interleaved_medians, model

DPM_2M = jaxsched.DPMSolverMultistepScheduler(**SD)


def _lowered(sched, steps: int, shape=SHAPE):
    state = sched.init(steps, shape)
    x = jnp.zeros(shape)
    return jax.jit(lambda state, x: jaxsched.sample(sched, state, model, x)).lower(state, x)


def compile_seconds(steps: int, sched=DPM_2M, repeats: int = 3) -> float:
    """Median seconds to lower and compile ``sample`` for ``steps`` (a fresh jit each time)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _lowered(sched, steps).compile()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def compile_table() -> dict:
    """Compile time of the 10- and 100-step loops (target: ratio <= 1.3, under 2 s)."""
    ten, hundred = compile_seconds(10), compile_seconds(100)
    return {"compile_10_steps_s": ten, "compile_100_steps_s": hundred, "ratio": hundred / ten}


def vmap_table(num_schedules: int = 64, steps: int = 25, rounds: int = 10) -> dict:
    """One loop per noise schedule under ``vmap`` (each on a ``(1, 4, 64, 64)`` sample) against
    one batched loop of the same total size (target: at most 1.2x)."""
    sched = DPM_2M
    item = (1, *SHAPE[1:])
    ends = jnp.linspace(0.010, 0.014, num_schedules)
    schedules = jax.vmap(
        lambda b: jaxsched.noise_schedule("scaled_linear", beta_start=0.00085, beta_end=b)
    )(ends)
    states = jax.vmap(lambda s: sched.init(steps, item, schedule=s))(schedules)
    xs = jax.random.normal(jax.random.key(0), (num_schedules, *item))
    per_schedule = jax.jit(jax.vmap(lambda st, x: jaxsched.sample(sched, st, model, x)))
    batched_state = sched.init(steps, (num_schedules, *SHAPE[1:]))
    batched = jax.jit(lambda x: jaxsched.sample(sched, batched_state, model, x))
    ms = interleaved_medians(
        {
            "vmap": (lambda x: per_schedule(states, x), xs),
            "batched": (batched, xs.reshape(num_schedules, *SHAPE[1:])),
        },
        rounds,
    )
    return {**{f"{k}_ms": v for k, v in ms.items()}, "ratio": ms["vmap"] / ms["batched"]}


def _memory_in_samples(compiled) -> dict:
    """XLA's memory analysis of a compiled program, in samples of ``SHAPE``."""
    sample_bytes = 4 * int(jnp.prod(jnp.asarray(SHAPE)))
    stats = compiled.memory_analysis()
    return {
        "arguments": stats.argument_size_in_bytes / sample_bytes,
        "output": stats.output_size_in_bytes / sample_bytes,
        "temporaries": stats.temp_size_in_bytes / sample_bytes,
        "aliased": stats.alias_size_in_bytes / sample_bytes,
    }


def memory_table() -> list[dict]:
    """XLA's memory analysis of each compiled 25-step loop, in samples of ``SHAPE`` (target: at
    most ``order + 3`` samples, ``order`` the solver order, UniPC's predictor order; the model
    here allocates nothing of its own).

    Two ways to call the loop:
    - ``state argument``: ``jit(sample)`` of a state built outside. The caller's state and ``x``
      are its arguments, which the loop may not overwrite, so the loop's own memory is its
      temporaries and output.
    - ``init in jit, x donated``: ``init`` inside the jitted function and ``x`` donated, the way
      to run a loop in least memory; everything the program holds is counted.
    """
    from benchmarks.speed import CASES

    rows = []
    for label, sched, _, floor in CASES:
        order = getattr(sched, "solver_order", 1)
        x = jnp.zeros(SHAPE)
        passed = _memory_in_samples(_lowered(sched, 25).compile())
        inside = jax.jit(
            lambda x, sched=sched: jaxsched.sample(sched, sched.init(25, SHAPE), model, x),
            donate_argnums=0,
        )
        donated = _memory_in_samples(inside.lower(x).compile())
        rows.append(
            {
                "scheduler": label,
                "order": order,
                "history_buffers": floor.buffers,
                "state_argument_inputs": passed["arguments"],
                "state_argument_loop": passed["temporaries"] + passed["output"],
                "init_in_jit_peak": donated["arguments"]
                + donated["output"]
                + donated["temporaries"]
                - donated["aliased"],
                "bound_samples": order + 3,
            }
        )
    return rows
