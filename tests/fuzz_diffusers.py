"""Randomized differential fuzzing of jaxsched against diffusers, step by step.

Each case draws a random option combination for one scheduler class that both libraries have,
runs diffusers and jaxsched on the same inputs (start, model, variance noise), compares every
step's sample and x0 / converted model output, checks that ``jaxsched.sample`` (one
``lax.scan``) equals jaxsched's own eager step loop, and lands in exactly one category:

- ``match``: both run, finite, within tolerance at every step.
- ``both_reject``: jaxsched raises at construction / ``init`` (or rejects a step argument at
  the first step) and diffusers raises anywhere or ends non-finite.
- ``jaxsched_rejects``: jaxsched rejects; diffusers runs to a finite result.
- ``diffusers_rejects``: diffusers raises at construction / ``set_timesteps``; jaxsched runs,
  finite.
- ``diffusers_fails``: diffusers raises mid-run or turns non-finite; jaxsched is finite.
- ``jaxsched_fails``: jaxsched raises mid-run, turns non-finite (sample or x0) where diffusers
  is finite, or its ``sample`` disagrees with its step loop.
- ``both_nonfinite``: neither side gives a finite result (non-finite, or diffusers rejects).
- ``mismatch``: both finite, different beyond tolerance (or a different number of steps or
  different timesteps).

Tolerance: ``TOL * max(1, N / 50)`` on each step's max error over ``max(1, max |x|)``; x0 /
converted outputs get it over their conversion scale (``x0 = (x - sigma eps) / alpha``).
Cases are tagged with the README difference they show where it is detectable
(``DOCUMENTED_TAGS``) or the condition they hit (``CONDITION_TAGS``). Mismatches are rerun
under oracles: diffusers' module in float64 (``float32_precision``: rounding, not the
algorithm), jaxsched in float32 for float64 cases, diffusers with a begin index.

Options are drawn from diffusers' constructor signatures: known option names have pools of
values (``POOLS``); unknown ones are drawn from their ``Literal`` values, both booleans, or kept
at their default. Usage::

    python tests/fuzz_diffusers.py --cases 3000 --seed 0 [--classes ...] [--json out.json]
    python tests/fuzz_diffusers.py --seed 0 --replay DDIMScheduler:17   # one case, verbose
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import inspect
import json
import math
import sys
import time
import typing
import warnings
import zlib
from typing import Any

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxsched

# The variance-preserving classes; the flow-matching ones have their randomized differential
# test in tests/test_flow_match.py.
CLASSES = tuple(
    name
    for name, cls in jaxsched.SCHEDULERS.items()
    if hasattr(diffusers, name) and cls.training_levels == "vp"
)
CATEGORIES = (
    "match",
    "both_reject",
    "jaxsched_rejects",
    "diffusers_rejects",
    "diffusers_fails",
    "jaxsched_fails",
    "both_nonfinite",
    "mismatch",
)
DATA_STD = 0.6
# Parity tolerance (tests/test_dpmsolver.py, tests/test_ddim_parity.py): float32 rounding,
# scaled by N / 50 beyond 50 steps; relative to the larger of 1 and the sample's max |value|.
TOL = 5e-5
# jaxsched's lax.scan against its own eager step loop (same arithmetic, other fusion).
SELF_TOL = {False: 1e-5, True: 1e-10}
INF = float("inf")

# Value pools per diffusers option name: (values, weights), drawn when the option is not left at
# its default. Values outside a class's Literal are drawn rarely (see ``OFF_LITERAL``).
POOLS: dict[str, tuple[list[Any], list[float]]] = {
    "num_train_timesteps": ([1000, 50, 100, 128, 200, 500], [4, 1, 1, 1, 1, 1]),
    "beta_start": ([1e-4, 8.5e-4, 5e-4, 1e-3, 2e-3, 1e-5, 0.0], [3, 3, 1, 1, 1, 1, 0.4]),
    "beta_end": (
        [0.02, 0.012, 0.01, 0.03, 0.05, 0.1, 0.2, 0.5, 0.9, 0.999],
        [3, 3, 1, 1, 1, 0.5, 0.5, 0.3, 0.2, 0.2],
    ),
    "beta_schedule": (["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"], [3, 3, 3, 0.1]),
    "prediction_type": (["epsilon", "sample", "v_prediction", "flow_prediction"], [4, 2, 2, 1]),
    "timestep_spacing": (["leading", "trailing", "linspace"], [1, 1, 1]),
    "algorithm_type": (
        ["dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver", "deis"],
        [3, 2, 2, 1, 0.3],
    ),
    "solver_type": (["midpoint", "heun", "logrho", "bh1", "bh2"], [3, 3, 1, 0.3, 0.3]),
    "final_sigmas_type": (["zero", "sigma_min"], [1, 1]),
    "variance_type": ([None, "learned", "learned_range"], [4, 1, 1]),
    "solver_order": ([1, 2, 3], [1, 2, 2]),
    "steps_offset": ([0, 1, 2, 5], [4, 3, 1, 0.5]),
    "flow_shift": ([1.0, 3.0, 0.5, 1.5, 5.0, 7.0], [2, 2, 1, 1, 1, 0.5]),
    "lambda_min_clipped": ([-INF, -5.1, -3.0, -1.0, -10.0, 0.0], [3, 2, 1, 0.5, 0.5, 0.3]),
    "sample_max_value": ([1.0, 1.5, 3.0, 0.5, 10.0], [2, 1, 1, 1, 0.5]),
    "dynamic_thresholding_ratio": ([0.995, 0.9, 0.99, 0.8, 0.5], [2, 1, 1, 1, 0.5]),
    "clip_sample_range": ([1.0, 0.5, 2.0, 3.0, 0.1], [2, 1, 1, 1, 0.5]),
    "time_shift_type": (["exponential"], [1]),
}
# Booleans drawn True with this probability when not left at their default.
BOOL_TRUE = {"rescale_betas_zero_snr": 0.4, "thresholding": 0.5, "use_dynamic_shifting": 0.5}
# Mutually exclusive sigma spacings: drawn together (one at most, rarely two).
SIGMA_FLAGS = (
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "use_lu_lambdas",
    "use_flow_sigmas",
)
KEEP_DEFAULT = 0.5
# Eager init compiles each op once per shape (N): keeping the caches makes later cases cheap,
# but every compiled program holds memory maps (the kernel allows 65530 per process).
CLEAR_CACHES_EVERY = 500
# A level whose alpha (or sigma) is below this leaves x0 (or eps) undetermined in float32.
UNDETERMINED = 1e-6
LARGE_STEP_COUNTS = (50, 64, 100, 128, 200, 250, 333, 500, 999)
OFF_LITERAL = 0.03

# jaxsched's rejections of what diffusers runs, documented as differences (README): a substring
# of jaxsched's message, and the reason.
DOCUMENTED_REJECTIONS = {
    "with a stride of": "DPM-Solver / DEIS leading spacing with T // (N + 1) = 0: diffusers runs "
    "N steps at one timestep",
    "is undefined (sigma_t / 0)": "DPM-Solver++ inversion from sigma = 0 (beta_start=0) is "
    "inf - inf: diffusers returns NaN",
    "cannot invert: an SDE step": "SDE inversion: diffusers' is NaN from the first step",
    "use_flow_sigmas cannot be combined": "diffusers silently uses one of the two spacings",
    "which predict_x0=False does not use": "UniPC's thresholding in the noise form: diffusers "
    "ignores it silently",
    "needs predict_x0=True": "UniPC's flow prediction in the noise form: diffusers raises at the "
    "first step",
    "(check steps_offset or custom timesteps)": "steps_offset pushes a timestep past T - 1: "
    "diffusers fails mid-run (IndexError)",
    "outside 0..": "the same for DDIM",
    "trained_betas has": "trained_betas whose length is not num_train_timesteps",
    "cannot exceed num_train_timesteps": "DPM-Solver / DEIS with N > T: diffusers repeats "
    "timesteps (and is NaN with default options)",
    "eta must lie in": "DDIM eta > 1: sqrt(1 - a_prev - (eta sigma)^2) of a negative, diffusers' "
    "NaN wherever a step has variance",
}


# Tags that explain a non-match case: README "Differences from diffusers" entries and rounding.
DOCUMENTED_TAGS = {
    "trailing_extra_step": "trailing spacing: diffusers' spurious extra step at t = -1",
    "inverse_dedup": "diffusers' inverse drops repeated timesteps but not their sigmas",
    "matches_with_begin_index": "repeated timesteps: diffusers' lookup (agrees with a begin index)",
    "zero_length_step": "a zero-length step is a no-op (diffusers divides by h = 0)",
    "inverse_flow_direction": "diffusers' inverse walks flow sigmas toward the data",
    "sde_dpmsolver_order3": "third-order sde-dpmsolver: diffusers has no such update",
    "zero_snr_undetermined_prediction": "x0 at a zero-SNR level is 0 (diffusers: infinite)",
    "data_end_undetermined_prediction": "eps at sigma = 0 is 0 (diffusers: infinite)",
    "zero_final_sigma": "DEIS to a zero final sigma stays finite (diffusers: 0 * inf)",
    "learned_variance_channels": "learned variance sliced by channel count (diffusers: 3)",
    "documented_rejection": "rejected up front (DOCUMENTED_REJECTIONS)",
    "x64_timestep_rounding": "a float64 grid rounds a knife-edge timestep the other way",
    "zero_snr_rescale_ulp": "the zero-SNR rescale's one-ulp difference moves a knife-edge timestep",
    "float32_precision": "agrees with diffusers run in float64: float32 rounding",
    "float32_tables": "agrees in float32: the difference is diffusers' float32 tables",
    "deis_weight_cancellation": "DEIS: agrees in float64 where float32 first differs; diffusers' "
    "weights cancel (even in float64 later)",
}
# Tags naming a condition (a known defect family), not a documented difference.
CONDITION_TAGS = {
    "repeated_timesteps": "the grid repeats a timestep",
    "alphas_cumprod_underflow": "diffusers' float32 alphas_cumprod reaches 0 or NaN early",
    "eta_above_one": "DDIM eta > 1",
    "stochastic_ddim_zero_snr": "DDIM eta > 0 through a level with alpha ~ 0",
    "step_to_zero_sigma": "the failing step ends at sigma = 0",
    "sample_vs_step_loop": "jaxsched.sample disagrees with jaxsched's step loop",
    "fuzzer_error": "the fuzzer itself raised",
    "model_output_nonfinite": "the harness's model returned NaN/inf (e.g. diffusers' own table "
    "is NaN), which jaxsched refuses as input",
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One drawn case: class, diffusers options (non-default ones) and run settings."""

    cls_name: str
    index: int
    seed: int
    config: dict[str, Any]
    num_inference_steps: int
    float64: bool
    shape: tuple[int, ...]
    eta: float = 0.0
    use_clipped_model_output: bool = False
    mu: float | None = None
    perturbation: float = 0.1
    variance_channels: bool = False
    unroll: int | None = None

    def describe(self) -> dict[str, Any]:
        """The case as plain JSON-able values (long ``trained_betas`` summarised)."""
        config = dict(self.config)
        betas = config.get("trained_betas")
        if betas is not None:
            config["trained_betas"] = (
                f"<{len(betas)} values {betas[0]:.3g}..{betas[-1]:.3g}: "
                f"{self.config.get('_trained_betas_spec', '')}>"
            )
        config.pop("_trained_betas_spec", None)
        out = dataclasses.asdict(self)
        out["config"] = config
        out["dtype"] = "float64" if self.float64 else "float32"
        del out["float64"]
        return out


@dataclasses.dataclass
class Result:
    """A case's category, known-difference tags, the first differing or failing step, the
    largest normalised error there, and a message."""

    case: Case
    category: str
    tags: list[str] = dataclasses.field(default_factory=list)
    step: int | None = None
    error: float | None = None
    message: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            **self.case.describe(),
            "category": self.category,
            "tags": self.tags,
            "step": self.step,
            "error": self.error,
            "message": self.message,
        }


# -- drawing ------------------------------------------------------------------------------------


def _choice(rng: np.random.Generator, values: list[Any], weights: list[float]) -> Any:
    p = np.asarray(weights, float)
    return values[int(rng.choice(len(values), p=p / p.sum()))]


def _literal_values(annotation: Any) -> list[Any] | None:
    """The values a ``Literal`` (or ``Optional[Literal]``) annotation allows, else ``None``."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    values = []
    for arg in typing.get_args(annotation):
        if arg is type(None):
            values.append(None)
        elif typing.get_origin(arg) is typing.Literal:
            values.extend(typing.get_args(arg))
    return values if any(v is not None for v in values) else None


def diffusers_options(cls_name: str) -> dict[str, inspect.Parameter]:
    """diffusers' constructor keyword arguments of ``cls_name``."""
    params = inspect.signature(getattr(diffusers, cls_name).__init__).parameters
    return {
        name: p
        for name, p in params.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def _trained_betas(rng: np.random.Generator, length: int) -> tuple[list[float], str]:
    lo = float(10 ** rng.uniform(-5, -3))
    hi = float(10 ** rng.uniform(-2.3, -1.3))
    power = float(rng.uniform(1.0, 2.0))
    betas = np.linspace(lo ** (1 / power), hi ** (1 / power), length) ** power
    return betas.tolist(), f"linspace({lo:.3g}**(1/p), {hi:.3g}**(1/p), {length})**p, p={power:.3g}"


def _draw_option(rng: np.random.Generator, name: str, param: inspect.Parameter) -> Any:
    """A value for one option: its pool (mostly within the class's ``Literal``), else a value
    by the default's type (a bool either way, anything else its default)."""
    default = param.default
    allowed = _literal_values(param.annotation)
    if name in POOLS:
        values, weights = POOLS[name]
        if allowed is not None and rng.random() > OFF_LITERAL:
            kept = [(v, w) for v, w in zip(values, weights, strict=True) if v in allowed]
            if kept:
                values, weights = [v for v, _ in kept], [w for _, w in kept]
        return _choice(rng, values, weights)
    if isinstance(default, bool):
        return bool(rng.random() < BOOL_TRUE.get(name, 0.5))
    if allowed is not None:
        return allowed[int(rng.integers(len(allowed)))]
    return default


def _case_rng(seed: int, cls_name: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(cls_name.encode()), index])


def _num_inference_steps(rng: np.random.Generator, num_train_timesteps: int) -> int:
    u = rng.random()
    if u < 0.82:
        return int(rng.integers(1, 41))
    if u < 0.96:  # a few large counts, so eager init's shapes repeat (compiled once)
        large = [n for n in LARGE_STEP_COUNTS if n <= num_train_timesteps]
        return large[int(rng.integers(len(large)))] if large else num_train_timesteps
    if u < 0.99:
        return num_train_timesteps
    return num_train_timesteps + int(rng.integers(1, 4))


def draw_case(cls_name: str, seed: int, index: int) -> Case:
    """The ``index``-th case of ``cls_name`` for ``seed`` (independent of other classes)."""
    rng = _case_rng(seed, cls_name, index)
    options = diffusers_options(cls_name)
    config: dict[str, Any] = {}
    for name, param in options.items():
        if name in SIGMA_FLAGS or name == "trained_betas" or rng.random() < KEEP_DEFAULT:
            continue
        value = _draw_option(rng, name, param)
        if value != param.default or (value is None) != (param.default is None):
            config[name] = value
    num_train = config.get("num_train_timesteps", options["num_train_timesteps"].default)
    if "trained_betas" in options and rng.random() < 0.05:
        length = num_train if rng.random() < 0.9 else num_train - 1
        config["trained_betas"], config["_trained_betas_spec"] = _trained_betas(rng, length)
    flags = [f for f in SIGMA_FLAGS if f in options]
    if flags and rng.random() < 0.55:
        config[flags[int(rng.integers(len(flags)))]] = True
        if rng.random() < 0.04:
            config[flags[int(rng.integers(len(flags)))]] = True
    if config.get("use_flow_sigmas") and rng.random() < 0.7 and "prediction_type" in options:
        config["prediction_type"] = "flow_prediction"
    flow = config.get("prediction_type") == "flow_prediction" and cls_name.startswith("DPM")
    if flow and rng.random() < 0.8:
        config["algorithm_type"] = _choice(rng, ["dpmsolver++", "sde-dpmsolver++"], [2, 1])
    noise_form = str(config.get("algorithm_type", "dpmsolver++")).endswith("dpmsolver")
    # UniPC's noise form and bh1 are NaN at a final zero sigma in diffusers (documented).
    if cls_name.startswith("UniPC"):
        noise_form = config.get("predict_x0") is False or config.get("solver_type") == "bh1"
    if noise_form and "final_sigmas_type" in options and rng.random() < 0.85:
        config["final_sigmas_type"] = "sigma_min"
    stochastic_ddim = cls_name == "DDIMScheduler"
    eta = float(_choice(rng, [0.0, 0.5, 1.0, 1.5], [5, 2, 2, 0.5])) if stochastic_ddim else 0.0
    mu = None
    # UniPC requires mu with dynamic shifting (diffusers too); the others take it or not.
    mu_rate = 0.9 if cls_name.startswith("UniPC") else 0.5
    if config.get("use_dynamic_shifting") and rng.random() < mu_rate:
        mu = float(rng.uniform(-1.0, 2.0))
    channels = config.get("variance_type") is not None and rng.random() < 0.6
    epsilon = config.get("prediction_type", "epsilon") == "epsilon"
    # diffusers' thresholding reshapes with a float for 2-D samples: images only there.
    image = channels or config.get("thresholding") or rng.random() < 0.4
    shape = (2, 3, 4, 4) if image else (2, 4)
    return Case(
        cls_name=cls_name,
        index=index,
        seed=seed,
        config=config,
        num_inference_steps=_num_inference_steps(rng, num_train),
        float64=bool(rng.random() < 0.25),
        shape=shape,
        eta=eta,
        use_clipped_model_output=bool(stochastic_ddim and rng.random() < 0.3),
        mu=mu,
        perturbation=float(_choice(rng, [0.1, 0.0, 1.0], [7, 1, 2])),
        variance_channels=bool(channels and rng.random() < 0.5 and epsilon),
        unroll=_choice(rng, [None, 1, 2], [3, 5.5, 1.5]),
    )


# -- the model both sides call ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Model:
    """A deterministic model of ``(x, t)``: the exact prediction for N(0, DATA_STD^2) data at
    the training level of ``t``, plus a perturbation ``p(t)`` (smooth in ``t``, so the same on
    both sides and inside a scan), in ``prediction_type`` form (flow: ``-x / 2 + p``)."""

    prediction_type: str
    alphas_cumprod: np.ndarray
    scale: float
    frequency: np.ndarray
    phase: np.ndarray
    extra_channels: bool

    def __call__(self, x, t, xp=jnp):
        """``xp`` is ``jnp`` (traceable; jaxsched) or ``np`` (diffusers)."""
        dtype = x.dtype
        table = xp.asarray(self.alphas_cumprod, dtype)
        last = len(self.alphas_cumprod) - 1
        if xp is np:
            t = float(t)
            index = min(max(math.floor(t), 0), last)
        else:
            t = jnp.asarray(t).astype(dtype)
            index = jnp.clip(jnp.floor(t), 0, last).astype(jnp.int32)
        abar = table[index]
        alpha, sigma = xp.sqrt(abar), xp.sqrt(1 - abar)
        p = (self.scale * xp.sin(xp.asarray(self.frequency, dtype) * t + self.phase)).astype(dtype)
        var = abar * DATA_STD**2 + (1 - abar)
        eps = sigma * x / var + p
        x0 = alpha * DATA_STD**2 * x / var - p
        out = {
            "epsilon": eps,
            "sample": x0,
            "v_prediction": alpha * eps - sigma * x0,
            "flow_prediction": -0.5 * x + p,
        }[self.prediction_type]
        if self.extra_channels:  # a learned variance, as extra channels
            out = xp.concatenate([out, xp.tanh(out)], axis=1)
        return out.astype(dtype)


# -- running one case -------------------------------------------------------------------------


def _message(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) < 400 else text[:400] + "..."


@dataclasses.dataclass
class Trace:
    """One side's run: per-step samples, x0 / converted outputs and their conversion scale, the
    timesteps, and where it raised (``None`` if it did not)."""

    timesteps: list = dataclasses.field(default_factory=list)
    samples: list = dataclasses.field(default_factory=list)
    converted: list = dataclasses.field(default_factory=list)
    scales: list = dataclasses.field(default_factory=list)
    levels: list = dataclasses.field(default_factory=list)
    scanned: np.ndarray | None = None
    error_step: int | None = None
    error: str = ""

    def first_nonfinite(self, converted: bool = False) -> int | None:
        """The first step with a non-finite sample (or, with ``converted``, x0 / converted
        output: diffusers' are infinite at undetermined levels, a documented difference)."""
        for i, x in enumerate(self.samples):
            m = self.converted[i] if converted and i < len(self.converted) else None
            if not np.isfinite(x).all() or (m is not None and not np.isfinite(m).all()):
                return i
        return None

    @property
    def finite(self) -> bool:
        return self.error_step is None and self.first_nonfinite() is None


def _run_diffusers(ref, case: Case, x_start, model, noise) -> Trace:
    trace = Trace(timesteps=[int(t) for t in ref.timesteps])
    x = torch.from_numpy(x_start.copy())
    ddim = case.cls_name.startswith("DDIM")
    sde = str(ref.config.get("algorithm_type", "")).startswith("sde")
    for i, t in enumerate(ref.timesteps):
        kwargs = {}
        if case.cls_name == "DDIMScheduler":
            kwargs = {"eta": case.eta, "use_clipped_model_output": case.use_clipped_model_output}
            if case.eta > 0:
                kwargs["variance_noise"] = torch.from_numpy(noise[i])
        elif sde:
            kwargs["variance_noise"] = torch.from_numpy(noise[i])
        try:
            m = model(x.numpy(), int(t), xp=np)
            out = ref.step(torch.from_numpy(m), t, x, **kwargs)
        except Exception as err:
            trace.error_step, trace.error = i, _message(err)
            break
        x = out.prev_sample
        trace.samples.append(x.numpy().copy())
        if ddim:
            trace.converted.append(out.pred_original_sample.numpy().copy())
        else:
            trace.converted.append(ref.model_outputs[-1].numpy().copy())
    return trace


def _jaxsched_converted(sched, state, i: int):
    """``(converted output, its conversion scale)`` after step ``i``: x0 for DDIM and
    DPM-Solver++, eps for noise-form DPM-Solver and DEIS (``None`` where the state keeps none)."""
    c = state.coefficients
    if isinstance(sched, jaxsched.DDIMScheduler | jaxsched.DDIMInverseScheduler):
        return np.asarray(state.pred_original_sample), float(c.start.alpha[i])
    alpha, sigma = float(c.convert_alpha[i]), float(c.convert_sigma[i])
    data = getattr(sched, "algorithm_type", "").endswith("++")
    if state.history.outputs:
        m = np.asarray(state.history.outputs[0])
    elif data:
        m = np.asarray(state.pred_original_sample)
    else:
        return None, None
    return m, (alpha if data else min(alpha, sigma))


def _start_level(sched, state, i: int) -> tuple[float, float]:
    """``(alpha, sigma)`` of the level step ``i`` starts from (the conversion scales)."""
    c = state.coefficients
    if isinstance(sched, jaxsched.DDIMScheduler | jaxsched.DDIMInverseScheduler):
        return float(c.start.alpha[i]), float(c.start.sigma[i])
    return float(c.convert_alpha[i]), float(c.convert_sigma[i])


def _step_kwargs(case: Case) -> dict[str, Any]:
    if case.cls_name != "DDIMScheduler":
        return {}
    return {"eta": case.eta, "use_clipped_model_output": case.use_clipped_model_output}


def _stochastic(sched, case: Case) -> bool:
    return getattr(sched, "algorithm_type", "").startswith("sde") or (
        case.cls_name == "DDIMScheduler" and case.eta > 0
    )


def _run_jaxsched(sched, state, case: Case, x_start, model, noise) -> tuple[Trace, str]:
    """The eager step loop, then ``sample`` against it; returns the trace and a message when
    ``sample`` raised, was non-finite or disagreed."""
    n = int(state.num_inference_steps)
    trace = Trace(timesteps=np.asarray(state.timesteps).tolist())
    stochastic = _stochastic(sched, case)
    kwargs = _step_kwargs(case)
    x, start = jnp.asarray(x_start), state
    for i in range(n):
        try:
            t = state.timesteps[i]
            extra = {"noise": jnp.asarray(noise[i])} if stochastic else {}
            state, x = sched.step(state, model(x, t), t, x, **extra, **kwargs)
            trace.samples.append(np.asarray(x))
            m, scale = _jaxsched_converted(sched, state, i)
        except Exception as err:
            trace.error_step, trace.error = i, _message(err)
            return trace, ""
        trace.converted.append(m)
        trace.scales.append(scale)
        trace.levels.append(_start_level(sched, state, i))
    if trace.error_step is not None or trace.first_nonfinite(converted=True) is not None:
        return trace, ""
    try:
        extra = {"noise": jnp.asarray(noise[:n])} if stochastic else {}
        x_start = jnp.asarray(x_start)
        scanned = jaxsched.sample(
            sched, start, model, x_start, unroll=case.unroll, **extra, **kwargs
        )
        trace.scanned = scanned = np.asarray(scanned)
    except Exception as err:
        return trace, f"sample raised {_message(err)}"
    loop = trace.samples[-1]
    if not np.isfinite(scanned).all():
        return trace, "sample is non-finite where the step loop is finite"
    error = _normalised_error(scanned, loop)
    # x0 = (x - sigma eps) / alpha: rounding differences grow by 1 / alpha (the worst scale).
    worst_scale = min([1.0, *(alpha for alpha, _ in trace.levels)])
    tol = SELF_TOL[case.float64] * max(1.0, n / 50) / max(worst_scale, 1e-30)
    if error > tol:
        return trace, f"sample differs from the step loop by {error:.3g} (tolerance {tol:.3g})"
    return trace, ""


def _normalised_error(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b|`` over the larger of 1 and ``max |b|``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def _compare(case: Case, ours: Trace, ref: Trace) -> tuple[int | None, float, str]:
    """``(first step beyond tolerance, worst normalised error / tolerance, what differs)``."""
    n = case.num_inference_steps
    tol = TOL * max(1.0, n / 50)
    worst, first, what = 0.0, None, ""
    common = min(len(ours.samples), len(ref.samples))
    for i in range(common):
        t_ours = ours.timesteps[i]
        t_ref = ref.timesteps[i]
        if t_ours != t_ref and first is None:
            first, what = i, f"timestep {t_ours} vs diffusers' {t_ref}"
        ratio = _normalised_error(ours.samples[i], ref.samples[i]) / tol
        if ratio > 1 and first is None:
            first, what = i, "sample"
        worst = max(worst, ratio)
        m, m_ref = ours.converted[i], ref.converted[i]
        if m is None or m_ref is None or not np.isfinite(m_ref).all():
            continue
        if m.shape != m_ref.shape:
            continue
        scale = max(min(ours.scales[i], 1.0), 1e-12)
        ratio = _normalised_error(m, m_ref) * scale / tol
        if ratio > 1 and first is None:
            first, what = i, "x0 / converted output"
        worst = max(worst, ratio)
    if len(ours.samples) != len(ref.samples) and first is None:
        first, what = common, f"{len(ours.samples)} steps vs diffusers' {len(ref.samples)}"
    return first, worst * tol, what


def _same_level(a, b) -> bool:
    """Equal sigmas up to a few float32 ulps (a spacing's last sigma and sigma_min computed two
    ways differ by one)."""
    a, b = float(a), float(b)
    return abs(a - b) <= 4 * float(np.finfo(np.float32).eps) * max(abs(a), abs(b))


def _zero_length_step_near(sigmas, step: int) -> bool:
    """Whether step ``step`` or one of the two before it (whose ``h`` a multistep update
    divides by) has zero length."""
    return any(_same_level(sigmas[k], sigmas[k + 1]) for k in range(max(step - 2, 0), step + 1))


def _tags(case: Case, run: Run, result: Result) -> list[str]:
    """The README differences (and known defect families) this case shows, where detectable."""
    ref, ours, theirs = run.ref, run.ours, run.theirs
    tags = []
    cfg = dict(ref.config) if ref is not None else case.config
    n = case.num_inference_steps
    ref_ts = theirs.timesteps if theirs is not None else None
    if ref_ts is not None:
        if cfg.get("timestep_spacing") == "trailing" and len(ref_ts) == n + 1:
            tags.append("trailing_extra_step")
        if case.cls_name == "DPMSolverMultistepInverseScheduler" and len(ref_ts) < n:
            tags.append("inverse_dedup")
        if "Inverse" not in case.cls_name and len(set(ref_ts)) < len(ref_ts):
            tags.append("repeated_timesteps")
        ours_ts = ours.timesteps if ours is not None else ref_ts
        if (
            ours_ts != ref_ts
            and len(ours_ts) == len(ref_ts)
            and max(abs(a - b) for a, b in zip(ours_ts, ref_ts, strict=True)) == 1
        ):
            # a knife-edge timestep rounded the other way: float64 tables (x64), or the
            # zero-SNR rescale's one-ulp difference (torch's float32 sqrt)
            if case.float64:
                tags.append("x64_timestep_rounding")
            elif cfg.get("rescale_betas_zero_snr"):
                tags.append("zero_snr_rescale_ulp")
    abar = getattr(ref, "alphas_cumprod", None)
    if abar is not None and not bool((abar[:-1] > 0).all()):  # NaN compares False too
        tags.append("alphas_cumprod_underflow")  # float32 tables reach 0 before the end
    if case.cls_name == "DPMSolverMultistepInverseScheduler" and cfg.get("use_flow_sigmas"):
        tags.append("inverse_flow_direction")
    if case.cls_name == "DDIMScheduler" and case.eta > 1:
        tags.append("eta_above_one")
    stochastic_ddim = case.cls_name == "DDIMScheduler" and case.eta > 0 and ours is not None
    if stochastic_ddim and any(alpha < UNDETERMINED for alpha, _ in ours.levels):
        tags.append("stochastic_ddim_zero_snr")
    bad = result.step
    if bad is not None and ours is not None and bad < len(ours.levels):
        alpha, sigma = ours.levels[bad]
        if alpha < UNDETERMINED and cfg.get("rescale_betas_zero_snr"):
            tags.append("zero_snr_undetermined_prediction")
        if sigma < UNDETERMINED and case.cls_name.startswith("DDIM"):
            tags.append("data_end_undetermined_prediction")
    sigmas = None if case.cls_name.startswith("DDIM") else getattr(ref, "sigmas", None)
    bad = result.step
    if sigmas is not None and bad is not None and bad + 1 < len(sigmas):
        if float(sigmas[bad + 1]) == 0.0:
            tags.append("step_to_zero_sigma")
        if _zero_length_step_near(sigmas, bad):
            tags.append("zero_length_step")
    if theirs is not None and not theirs.finite:
        bad = _first_bad(theirs)
        if sigmas is not None and bad + 1 < len(sigmas):
            if _zero_length_step_near(sigmas, bad):
                tags.append("zero_length_step")
            if float(sigmas[bad + 1]) == 0.0 and case.cls_name.startswith("DEIS"):
                tags.append("zero_final_sigma")
        if cfg.get("algorithm_type") == "sde-dpmsolver" and cfg.get("solver_order") == 3:
            tags.append("sde_dpmsolver_order3")
        if cfg.get("variance_type") and len(case.shape) > 1 and case.shape[1] != 3:
            tags.append("learned_variance_channels")
    return sorted(set(tags), key=tags.index)


def run_case(case: Case) -> Result:
    """Run one case on both sides and classify it; never raises."""
    start = time.perf_counter()
    with warnings.catch_warnings(), np.errstate(all="ignore"), jax.enable_x64(case.float64):
        warnings.simplefilter("ignore")
        try:
            result = _run_case(case)
        except Exception as err:  # a bug of the fuzzer itself: report, do not abort
            result = Result(case, "jaxsched_fails", ["fuzzer_error"], message=_message(err))
    result.seconds = time.perf_counter() - start
    return result


@dataclasses.dataclass
class Run:
    """Both sides of one case at one precision: what was built, what each rejected (message),
    each side's trace, and what ``sample`` against the step loop found."""

    ref: Any = None
    sched: Any = None
    state: Any = None
    d_reject: str = ""
    j_reject: str = ""
    theirs: Trace | None = None
    ours: Trace | None = None
    sample_problem: str = ""


def _run(
    case: Case, float64: bool, *, diffusers_float64: bool = False, begin_index: bool = False
) -> Run:
    """Build and run both sides; ``diffusers_float64`` runs diffusers' module in float64,
    ``begin_index`` sets diffusers' begin index to 0 (no timestep lookup)."""
    if diffusers_float64:
        with _diffusers_in_float64(case.cls_name):
            return _run(case, float64, begin_index=begin_index)
    np_dtype = np.float64 if float64 else np.float32
    config = {k: v for k, v in case.config.items() if not k.startswith("_")}
    n = case.num_inference_steps
    mu = {} if case.mu is None else {"mu": case.mu}
    run = Run()
    try:
        run.ref = getattr(diffusers, case.cls_name)(**config)
    except Exception as err:
        run.d_reject = _message(err)
    try:
        source = dict(run.ref.config) if run.ref is not None else config
        run.sched = jaxsched.from_config(source, cls=case.cls_name)
        run.state = run.sched.init(n, case.shape, np_dtype, **mu)
    except Exception as err:
        run.j_reject = _message(err)
    if run.ref is not None:
        try:
            run.ref.set_timesteps(n, **mu)
            if begin_index:
                run.ref.set_begin_index(0)
        except Exception as err:
            run.d_reject = _message(err)

    rng = _case_rng(case.seed, case.cls_name, case.index + 10**9)  # the inputs' own stream
    x_start = rng.standard_normal(case.shape).astype(np_dtype)
    if "Inverse" in case.cls_name:
        x_start = (DATA_STD * x_start).astype(np_dtype)
    if run.ref is not None:
        table, prediction_type = run.ref.alphas_cumprod.numpy(), run.ref.config.prediction_type
    elif run.state is not None:
        table, prediction_type = run.state.schedule.alphas_cumprod, run.sched.prediction_type
    else:
        table, prediction_type = np.ones(1), "epsilon"
    model = Model(
        prediction_type=prediction_type,
        alphas_cumprod=np.asarray(table, np.float32).astype(np_dtype),
        scale=case.perturbation,
        frequency=rng.uniform(0.002, 0.02, case.shape).astype(np_dtype),
        phase=rng.uniform(0, 2 * np.pi, case.shape[1:2] + (1,) * (len(case.shape) - 2)).astype(
            np_dtype
        ),
        extra_channels=case.variance_channels,
    )
    steps = max(n, 0 if run.d_reject else len(run.ref.timesteps)) + 1
    noise = rng.standard_normal((steps, *case.shape)).astype(np_dtype)
    if not run.d_reject:
        run.theirs = _run_diffusers(run.ref, case, x_start, model, noise)
    if not run.j_reject:
        run.ours, run.sample_problem = _run_jaxsched(
            run.sched, run.state, case, x_start, model, noise
        )
    return run


class _Float64Namespace:
    """A stand-in for a module (``torch`` or ``numpy``) whose ``float32`` is ``float64``."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, "float64" if name == "float32" else name)


@contextlib.contextmanager
def _diffusers_in_float64(cls_name: str):
    """Run diffusers' scheduler module in float64: its tables, grids and updates name
    ``torch.float32`` / ``np.float32``, which here resolve to float64 (an oracle for rounding,
    independent of jaxsched)."""
    module = sys.modules[getattr(diffusers, cls_name).__module__]
    saved = module.torch, module.np
    module.torch, module.np = _Float64Namespace(torch), _Float64Namespace(np)
    try:
        yield
    finally:
        module.torch, module.np = saved


def _first_bad(trace: Trace) -> int | None:
    return trace.error_step if trace.error_step is not None else trace.first_nonfinite()


def _rejected_at_first_step(trace: Trace) -> bool:
    """A ValueError / TypeError at the first step validates a step argument (DDIM's eta)."""
    return trace.error_step == 0 and trace.error.startswith(("ValueError", "TypeError"))


def _run_case(case: Case) -> Result:
    run = _run(case, case.float64)
    if run.ours is not None and _rejected_at_first_step(run.ours):
        run.j_reject = f"at the first step: {run.ours.error}"
    if run.sample_problem.startswith("sample differs") and not case.float64:
        run.sample_problem = _unless_rounding(case, run)
    result = _classify(case, run, [])
    result.tags = _tags(case, run, result) + result.tags
    if result.category == "mismatch" or (
        result.category == "diffusers_fails" and "repeated_timesteps" in result.tags
    ):
        _explain(case, result)
    return result


def _unless_rounding(case: Case, run: Run) -> str:
    """The sample-vs-step-loop problem of a float32 case, or ``""`` when float32 rounding
    explains it: against jaxsched's own float64 run, ``sample`` is about as accurate as the
    step loop (ill-conditioned cases, e.g. high order over hundreds of steps, differ by more
    than the fixed tolerance)."""
    try:
        with jax.enable_x64(True):
            exact = _run(case, True).ours
    except Exception:
        return run.sample_problem
    if exact is None or not exact.finite or exact.error_step is not None:
        return run.sample_problem
    reference = exact.samples[-1]
    scan_error = _normalised_error(run.ours.scanned, reference)
    loop_error = _normalised_error(run.ours.samples[-1], reference)
    if scan_error <= 2 * loop_error + SELF_TOL[False]:
        return ""
    return (
        f"{run.sample_problem}; against float64, sample is off by {scan_error:.3g}, the step "
        f"loop by {loop_error:.3g}"
    )


def _classify(case: Case, run: Run, tags: list[str]) -> Result:
    ours, theirs = run.ours, run.theirs
    if run.j_reject:
        if any(text in run.j_reject for text in DOCUMENTED_REJECTIONS):
            tags.append("documented_rejection")
        if run.d_reject:
            message = f"jaxsched: {run.j_reject} | diffusers: {run.d_reject}"
            return Result(case, "both_reject", tags, message=message)
        if not theirs.finite:
            why = theirs.error or "non-finite"
            message = f"jaxsched: {run.j_reject} | diffusers mid-run: {why}"
            return Result(case, "both_reject", tags, step=_first_bad(theirs), message=message)
        return Result(case, "jaxsched_rejects", tags, message=run.j_reject)
    if ours.error_step is not None:
        if "model_output has non-finite values" in ours.error:  # the harness's model gave NaN
            tags = [*tags, "model_output_nonfinite"]
            return Result(case, "both_nonfinite", tags, step=ours.error_step, message=ours.error)
        return Result(case, "jaxsched_fails", tags, step=ours.error_step, message=ours.error)
    if run.sample_problem:
        tags = [*tags, "sample_vs_step_loop"]
        return Result(case, "jaxsched_fails", tags, message=run.sample_problem)
    ours_bad = ours.first_nonfinite(converted=True)
    if ours_bad is not None:
        if run.d_reject or not theirs.finite:
            why = run.d_reject or theirs.error or "non-finite"
            return Result(case, "both_nonfinite", tags, step=ours_bad, message=f"diffusers: {why}")
        return Result(case, "jaxsched_fails", tags, step=ours_bad, message="non-finite values")
    if run.d_reject:
        return Result(case, "diffusers_rejects", tags, message=run.d_reject)
    if not theirs.finite:
        message = theirs.error or "non-finite sample"
        return Result(case, "diffusers_fails", tags, step=_first_bad(theirs), message=message)
    step, error, what = _compare(case, ours, theirs)
    if step is not None:
        return Result(case, "mismatch", tags, step=step, error=error, message=what)
    return Result(case, "match", tags, error=error)


def _explain(case: Case, result: Result) -> None:
    """Rerun a mismatch (or a diffusers failure) under oracles and tag what makes it agree:

    - ``float32_precision``: diffusers' module run in float64 and jaxsched in x64 agree, so the
      difference is float32 rounding, not the algorithm;
    - ``float32_tables``: (a float64 case) jaxsched in float32, whose tables are diffusers' bit
      for bit, agrees;
    - ``matches_with_begin_index``: diffusers agrees once ``set_begin_index(0)`` replaces its
      lookup of (repeated) timesteps.
    """
    checks = []
    if result.category == "mismatch":
        checks.append(("float32_precision", {"float64": True, "diffusers_float64": True}))
        if case.float64:
            checks.append(("float32_tables", {"float64": False}))
    if "repeated_timesteps" in result.tags:
        checks.append(("matches_with_begin_index", {"float64": case.float64, "begin_index": True}))
    for tag, options in checks:
        try:
            with jax.enable_x64(options["float64"]):
                run = _run(case, **options)
        except Exception:
            continue
        if run.d_reject or run.j_reject or run.sample_problem:
            continue
        if not (run.ours.finite and run.theirs.finite):
            continue
        step, error, _ = _compare(case, run.ours, run.theirs)
        if step is None:
            result.tags.append(tag)
            result.message += f" ({tag.replace('_', ' ')}: agree to {error:.2g})"
            return
        deis = case.cls_name.startswith("DEIS") and case.config.get("solver_order", 2) > 1
        if tag == "float32_precision" and deis and result.step is not None and step > result.step:
            # agree in float64 where float32 first differs; diffusers' DEIS weights cancel even
            # in float64 later (README), so only the first difference is explained
            result.tags.append("deis_weight_cancellation")
            result.message += f" (float64: agree up to step {step})"
            return


# -- driving many cases -------------------------------------------------------------------------


def fuzz(
    num_cases: int,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
    *,
    start: int = 0,
    progress: bool = False,
) -> list[Result]:
    """Run ``num_cases`` cases, the classes in turn; case ``i`` of class ``c`` is
    ``draw_case(c, seed, i)``."""
    results = []
    began = time.perf_counter()
    for k in range(start, start + num_cases):
        cls_name = classes[k % len(classes)]
        results.append(run_case(draw_case(cls_name, seed, k // len(classes))))
        done = k - start + 1
        if done % CLEAR_CACHES_EVERY == 0:
            jax.clear_caches()  # thousands of distinct configs otherwise keep their programs
        if progress and done % 50 == 0:
            counts = collections.Counter(r.category for r in results)
            print(
                f"[{done}/{num_cases}] {time.perf_counter() - began:.0f}s {dict(counts)} "
                f"maps={_memory_maps()}",
                file=sys.stderr,
                flush=True,
            )
    return results


def _memory_maps() -> int | None:
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def explained(result: Result) -> bool:
    """Whether a documented difference or float32 rounding explains a non-match case (tags in
    ``DOCUMENTED_TAGS``; diffusers' float32 tables underflowing, in a float64 case)."""
    tags = set(result.tags)
    lookup_overran = result.category == "diffusers_fails" and result.message.startswith(
        "IndexError"
    )
    if "repeated_timesteps" in tags and lookup_overran:  # diffusers' lookup ran past the end
        return True
    if "alphas_cumprod_underflow" in tags and result.case.float64:
        return True
    return bool(tags & set(DOCUMENTED_TAGS))


def report(results: list[Result], examples: int = 3) -> str:
    """The counts per class and category, and the first reproducers of each non-match
    category (new findings, i.e. untagged, first)."""
    classes = sorted({r.case.cls_name for r in results})
    short = {c: c.replace("Multistep", "").replace("Scheduler", "") for c in classes}
    width = max(len(s) for s in short.values()) + 2
    lines = ["".ljust(width) + "".join(f"{c[:12]:>13}" for c in CATEGORIES) + f"{'total':>8}"]
    counts = collections.Counter((r.case.cls_name, r.category) for r in results)
    for c in classes:
        row = [counts[(c, cat)] for cat in CATEGORIES]
        lines.append(short[c].ljust(width) + "".join(f"{v:>13}" for v in row) + f"{sum(row):>8}")
    totals = [sum(counts[(c, cat)] for c in classes) for cat in CATEGORIES]
    lines.append("total".ljust(width) + "".join(f"{v:>13}" for v in totals) + f"{sum(totals):>8}")
    lines.append("")
    for cat in CATEGORIES[1:]:
        group = [r for r in results if r.category == cat]
        if not group:
            continue
        tags = collections.Counter(t for r in group for t in r.tags)
        unexplained = sum(not explained(r) for r in group)
        lines.append(f"== {cat}: {len(group)} ({unexplained} not explained by a documented tag)")
        if tags:
            lines.append("   tags: " + ", ".join(f"{t}={k}" for t, k in tags.most_common()))
        messages = collections.Counter(_message_key(r.message) for r in group)
        for text, k in messages.most_common(6):
            lines.append(f"   {k:>4} x {text}")
        ordered = sorted(group, key=explained)
        for r in ordered[:examples]:
            d = r.case.describe()
            lines.append(
                f"   - {d['cls_name']}:{d['index']} N={d['num_inference_steps']} {d['dtype']} "
                f"shape={d['shape']} eta={d['eta']} clipped_eps={d['use_clipped_model_output']} "
                f"mu={d['mu']} perturbation={d['perturbation']} "
                f"variance_channels={d['variance_channels']}"
            )
            lines.append(f"     config={d['config']}")
            err = "" if r.error is None else f" error={r.error:.3g}"
            lines.append(f"     step={r.step}{err} tags={r.tags} {r.message[:300]}")
    return "\n".join(lines)


def _message_key(message: str) -> str:
    """A message without its numbers, to group alike failures."""
    out = []
    for word in message[:160].split():
        out.append("#" if any(ch.isdigit() for ch in word) else word)
    return " ".join(out)


def _replay(cls_name: str, seed: int, index: int) -> None:
    """Run one case and print it with every step's timesteps and normalised errors."""
    case = draw_case(cls_name, seed, index)
    print(json.dumps(case.describe(), indent=1, default=str))
    result = run_case(case)
    print(
        f"category={result.category} tags={result.tags} step={result.step} "
        f"error={result.error} ({result.seconds:.2f}s)\n{result.message}"
    )
    with warnings.catch_warnings(), np.errstate(all="ignore"), jax.enable_x64(case.float64):
        warnings.simplefilter("ignore")
        run = _run(case, case.float64)
    if run.ours is None or run.theirs is None:
        return
    ours, theirs = run.ours, run.theirs
    print(" i    t_ours    t_ref   sample_err   conv_err   scale  |x_ref|")
    for i in range(max(len(ours.samples), len(theirs.samples))):
        row = [f"{i:>3}"]
        row.append(f"{ours.timesteps[i] if i < len(ours.timesteps) else '-':>8}")
        row.append(f"{theirs.timesteps[i] if i < len(theirs.timesteps) else '-':>8}")
        if i < min(len(ours.samples), len(theirs.samples)):
            row.append(f"{_normalised_error(ours.samples[i], theirs.samples[i]):12.3g}")
            m, m_ref = ours.converted[i], theirs.converted[i]
            ok = m is not None and m_ref is not None and m.shape == m_ref.shape
            row.append(f"{_normalised_error(m, m_ref):10.3g}" if ok else f"{'-':>10}")
            row.append(f"{ours.scales[i] or 0:8.3g}")
            row.append(f"{float(np.max(np.abs(theirs.samples[i]))):8.3g}")
        print(" ".join(row))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=300, help="cases, the classes in turn")
    parser.add_argument("--seed", type=int, default=0, help="draws are reproducible per seed")
    parser.add_argument("--start", type=int, default=0, help="first case number (to resume)")
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), choices=CLASSES)
    parser.add_argument("--json", help="write every non-match case to this file")
    parser.add_argument("--examples", type=int, default=3, help="reproducers per category")
    parser.add_argument("--replay", help="CLASS:INDEX: run one case and print it")
    args = parser.parse_args(argv)
    if args.replay:
        cls_name, index = args.replay.split(":")
        _replay(cls_name, args.seed, int(index))
        return 0
    began = time.perf_counter()
    results = fuzz(args.cases, args.seed, tuple(args.classes), start=args.start, progress=True)
    print(report(results, args.examples))
    seconds = collections.defaultdict(float)
    for r in results:
        seconds[r.case.cls_name] += r.seconds
    print(
        f"\n{len(results)} cases in {time.perf_counter() - began:.0f}s; per class: "
        + ", ".join(f"{c} {s:.0f}s" for c, s in sorted(seconds.items()))
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.to_json() for r in results if r.category != "match"], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
