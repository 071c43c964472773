"""Speed: jaxsched's compiled loops against diffusers' Python loops and against the floor.

The work (issue 6): ``x`` of shape ``(16, 4, 64, 64)`` float32, the model ``0.1 * x``, the
Stable-Diffusion schedule (the flow-matching rows: shift 3, as SD3), 25 steps. Every
implementation runs in this one process, interleaved round by round, and the median over rounds
is reported (timings between processes on a shared CPU differ by 2-4x; within a process they
compare).

The floor is a jitted scan doing the least a solver of that order must: per step it reads
``x`` and the ``order - 1`` history buffers, applies the model and one fused update with
per-step scalar weights, and writes ``x`` and the history back. A predictor-corrector (UniPC)
also keeps its last corrected sample: its floor corrects that sample with the new model output
and the ``order`` previous ones, then predicts the next ``x`` from the corrected sample (see
:func:`predictor_corrector_floor_runner`). Each floor runs with the scheduler's own
``scan_unroll``, so the two loops have the same structure and differ only in the step. The
flow-matching floor is the flow ODE step itself over the same sigma table: Euler's
``x += (s' - s) v``, or Heun's predictor and corrector.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxsched

SHAPE = (16, 4, 64, 64)
STEPS = 25
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
FLOW_SHIFT = 3.0
NUM_TRAIN_TIMESTEPS = 1000


def model(x, t):
    """The benchmark's stand-in for a network: cheap and elementwise."""
    return 0.1 * x


class Floor(NamedTuple):
    """The floor loop of a case: ``outputs`` previous model outputs kept as history and, with
    ``corrector``, the predictor-corrector's step that also keeps its last corrected sample."""

    outputs: int
    corrector: bool = False

    @property
    def buffers(self) -> int:
        """Sample-sized history buffers carried from step to step."""
        return self.outputs + self.corrector

    def runner(self, unroll: int) -> Callable[[jax.Array], jax.Array]:
        """The jitted floor loop, ``unroll`` steps per scan iteration."""
        if self.corrector:
            return predictor_corrector_floor_runner(self.outputs, unroll=unroll)
        return floor_runner(self.outputs, unroll=unroll)


#: (label, jaxsched scheduler, diffusers class name, floor)
CASES = (
    (
        "DPM++ 2M",
        jaxsched.DPMSolverMultistepScheduler(**SD),
        "DPMSolverMultistepScheduler",
        Floor(1),
    ),
    (
        "DPM++ 3M",
        jaxsched.DPMSolverMultistepScheduler(**SD, solver_order=3),
        "DPMSolverMultistepScheduler",
        Floor(2),
    ),
    ("DEIS 2", jaxsched.DEISMultistepScheduler(**SD), "DEISMultistepScheduler", Floor(1)),
    (
        "UniPC 2",
        jaxsched.UniPCMultistepScheduler(**SD),
        "UniPCMultistepScheduler",
        Floor(2, corrector=True),
    ),
    (
        "UniPC 3",
        jaxsched.UniPCMultistepScheduler(**SD, solver_order=3),
        "UniPCMultistepScheduler",
        Floor(3, corrector=True),
    ),
    ("DDIM", jaxsched.DDIMScheduler(**SD, clip_sample=False), "DDIMScheduler", Floor(0)),
    (
        "DDIM inverse",
        jaxsched.DDIMInverseScheduler(**SD, clip_sample=False),
        "DDIMInverseScheduler",
        Floor(0),
    ),
    (
        "DPM++ inverse",
        jaxsched.DPMSolverMultistepInverseScheduler(**SD),
        "DPMSolverMultistepInverseScheduler",
        Floor(1),
    ),
)


#: (label, jaxsched scheduler, diffusers class name, model calls per step)
FLOW_CASES = (
    (
        "Flow Euler",
        jaxsched.FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFT),
        "FlowMatchEulerDiscreteScheduler",
        1,
    ),
    (
        "Flow Heun",
        jaxsched.FlowMatchHeunDiscreteScheduler(shift=FLOW_SHIFT),
        "FlowMatchHeunDiscreteScheduler",
        2,
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


def predictor_corrector_floor_runner(
    outputs: int, steps: int = STEPS, unroll: int = 1
) -> Callable[[jax.Array], jax.Array]:
    """The minimal loop of a predictor-corrector with history (UniPC of order ``outputs``), as
    a ``lax.scan`` over per-step scalar weights, ``unroll`` steps per iteration.

    Per step it reads ``x``, the previous corrected sample ``c`` and the ``outputs`` previous
    model outputs ``m_1..m_k``, applies the model (``m``), corrects ``c' = w x + w c + w m +
    sum_j w m_j`` (the last step redone with the new output) and predicts ``x' = w c' + w m +
    sum_{j < k} w m_j``, then writes ``x'``, ``c'`` and the history ``(m, m_1..m_{k-1})``.
    """
    corrector_weights, predictor_weights = outputs + 3, outputs + 1
    weights = jnp.asarray(
        np.random.default_rng(0).uniform(0.1, 0.3, (steps, corrector_weights + predictor_weights))
    )

    def body(carry, w):
        x, corrected, past = carry
        wc, wp = w[:corrector_weights], w[corrector_weights:]
        m = model(x, None)
        news = (m, *past)
        corrected = wc[0] * x + wc[1] * corrected
        for k, h in enumerate(news):
            corrected = corrected + wc[k + 2] * h
        x_next = wp[0] * corrected
        for k, h in enumerate(news[:-1]):
            x_next = x_next + wp[k + 1] * h
        return (x_next, corrected, news[:-1]), None

    @jax.jit
    def run(x):
        past = tuple(jnp.zeros_like(x) for _ in range(outputs))
        return jax.lax.scan(body, (x, x, past), weights, unroll=unroll)[0][0]

    return run


def shifted_flow_sigmas(
    shift: float, steps: int = STEPS, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> np.ndarray:
    """``(steps + 1,)`` descending: diffusers' ``FlowMatchEulerDiscreteScheduler`` grid, ``s``
    uniform from 1 to the shifted ``1 / T``, each shifted by ``s -> shift s / (1 + (shift - 1)
    s)`` (Esser et al. 2024, "Scaling Rectified Flow Transformers", sec. 5.3.2), then 0."""

    def shifted(s):
        return shift * s / (1.0 + (shift - 1.0) * s)

    return np.append(shifted(np.linspace(1.0, shifted(1.0 / num_train_timesteps), steps)), 0.0)


def flow_floor_runner(
    sigmas: np.ndarray, calls_per_step: int, unroll: int = 1
) -> Callable[[jax.Array], jax.Array]:
    """The least a flow solver must do, as a ``lax.scan`` over the steps ``(s, s')`` of
    ``sigmas`` ``(N + 1,)``, the model called at ``t = T s``.

    One call per step (Euler): ``x += (s' - s) v(x, s)``. Two (Heun; Karras et al. 2022,
    Algorithm 1): the predictor ``x_e = x + (s' - s) v``, then ``x += (s' - s) (v + v(x_e, s'))
    / 2``; the last step, to 0, is the predictor alone, as in diffusers (``2N - 1`` calls).
    """
    starts = jnp.asarray(sigmas[:-1], jnp.float32)
    ends = jnp.asarray(sigmas[1:], jnp.float32)

    def euler(x, step):
        s, s_next = step
        return x + (s_next - s) * model(x, NUM_TRAIN_TIMESTEPS * s), None

    def heun(x, step):
        s, s_next = step
        v = model(x, NUM_TRAIN_TIMESTEPS * s)
        v_end = model(x + (s_next - s) * v, NUM_TRAIN_TIMESTEPS * s_next)
        return x + (s_next - s) * 0.5 * (v + v_end), None

    @jax.jit
    def run(x):
        if calls_per_step == 1:
            return jax.lax.scan(euler, x, (starts, ends), unroll=unroll)[0]
        x = jax.lax.scan(heun, x, (starts[:-1], ends[:-1]), unroll=unroll)[0]
        return euler(x, (starts[-1], ends[-1]))[0]

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
    cases = [
        (label, sched, cls_name, floor.runner(sched.scan_unroll))
        for label, sched, cls_name, floor in CASES
    ]
    cases += [
        (
            label,
            sched,
            cls_name,
            flow_floor_runner(shifted_flow_sigmas(FLOW_SHIFT), calls, unroll=sched.scan_unroll),
        )
        for label, sched, cls_name, calls in FLOW_CASES
    ]
    rows = []
    for label, sched, cls_name, floor in cases:
        runners = {
            "jaxsched": (jaxsched_runner(sched), x),
            "jaxsched_traced_state": (jaxsched_runner(sched, traced_state=True), x),
            "diffusers": (diffusers_runner(cls_name, sched.to_config()), x_torch),
            "floor": (floor, x),
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
