"""The checks and bookkeeping every scheduler's ``init`` and ``step`` share: input and state
checks (raised at once where values are concrete, :func:`jaxsched.checked` debug checks where
they are traced), the per-step table gather and advancing the state."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxsched._checks import (
    OptionTypeError,
    check_floating_dtype,
    check_int,
    concrete_value,
)
from jaxsched.grids.levels import Level
from jaxsched.schedules import NoiseSchedule, default_float_dtype
from jaxsched.state import Origin, SchedulerState, Thresholds

if TYPE_CHECKING:
    from jaxsched.schedulers.base import Scheduler


def check_schedule_values(schedule: NoiseSchedule) -> None:
    """A given schedule's betas and ``alphas_cumprod`` lie in ``[0, 1]`` (so NaN fails too):
    raises naming ``schedule`` when concrete, a debug check when traced."""
    for name in ("betas", "alphas_cumprod"):
        table = getattr(schedule, name)
        known = concrete_value(table)
        if known is None:
            checkify.debug_check(
                jnp.all((table >= 0) & (table <= 1)),
                f"schedule.{name} must lie in [0, 1] (finite), got {{}}..{{}}",
                jnp.min(table),
                jnp.max(table),
            )
        elif not np.all((known >= 0) & (known <= 1)):
            raise ValueError(
                f"schedule.{name} must lie in [0, 1] (finite), got {np.nanmin(known)}.."
                f"{np.nanmax(known)}{' and NaN' if np.isnan(known).any() else ''}"
            )


def check_begin_index(begin_index: Any, num_steps: int) -> int:
    """The step a run begins at: ``0`` when ``None``, else an int in ``0 .. N - 1``."""
    if begin_index is None:
        return 0
    check_int("begin_index", begin_index)
    if not 0 <= begin_index < num_steps:
        raise ValueError(
            f"begin_index must lie in 0..{num_steps - 1} (a step of the {num_steps}-step run), "
            f"got {begin_index}"
        )
    return int(begin_index)


def check_init_shape(shape: Any) -> tuple[int, ...]:
    """The sample shape of a run as a tuple of ints >= 0; raises naming ``shape`` otherwise."""
    valid = isinstance(shape, (tuple, list)) and all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape
    )
    if not valid:
        raise OptionTypeError(f"shape must be a tuple of ints, e.g. x.shape, got {shape!r}")
    if any(d < 0 for d in shape):
        raise ValueError(f"shape must have sizes >= 0, got {tuple(shape)}")
    return tuple(int(d) for d in shape)


def _non_default_options(scheduler: Scheduler) -> str:
    """``name=value`` of the options that differ from their defaults (the likely culprits)."""
    changed = [
        f"{f.name}={getattr(scheduler, f.name)!r}"
        for f in dataclasses.fields(scheduler)
        if f.name != "trained_betas" and getattr(scheduler, f.name) != f.default
    ]
    if getattr(scheduler, "trained_betas", None) is not None:
        changed.append("trained_betas=[...]")
    return ", ".join(changed) or "all defaults"


def check_built_state(scheduler: Scheduler, state: SchedulerState, given: str = "") -> None:
    """Check what ``init`` derived from valid-looking options: timesteps finite and in
    ``0..T`` and every per-step table finite. Raises ``ValueError`` naming the options (and
    ``given`` init arguments) when the tables are concrete; a debug check when traced.

    Valid options can still derive garbage: a karras grid on a schedule that underflows, a flow
    shift so large every sigma rounds to 1, a ``mu`` far outside the usual range.
    """
    limit = scheduler.num_train_timesteps
    timesteps = state.timesteps
    # a grid sigma may be infinite (a pure-noise level); the scales and weights may not
    tables = jax.tree.map(
        lambda node: node._replace(grid_sigma=node.alpha) if isinstance(node, Level) else node,
        state.coefficients,
        is_leaf=lambda node: isinstance(node, Level),
    )
    leaves = jax.tree.leaves(tables)
    ts_known = concrete_value(timesteps)
    known = [concrete_value(leaf) for leaf in leaves]
    if ts_known is None or any(k is None for k in known):
        good_ts = jnp.all(jnp.isfinite(timesteps) & (timesteps >= 0) & (timesteps <= limit))
        good_tables = jnp.all(jnp.array([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
        checkify.debug_check(good_ts, f"init derived timesteps outside 0..{limit}: {{}}", timesteps)
        checkify.debug_check(good_tables, "init derived non-finite step tables")
        return
    culprits = f"options: {_non_default_options(scheduler)}{given}"
    with np.errstate(invalid="ignore"):
        bad_ts = ~np.isfinite(ts_known) | (ts_known < 0) | (ts_known > limit)
    if bad_ts.any():
        raise ValueError(
            f"these options give timesteps outside 0..{limit} at step(s) "
            f"{np.flatnonzero(bad_ts)[:8].tolist()} ({ts_known[bad_ts][:4].tolist()}); {culprits}"
        )
    bad_rows = np.zeros(len(ts_known), bool)
    for value in known:
        bad_rows |= ~np.isfinite(value).reshape(len(ts_known), -1).all(axis=1)
    if bad_rows.any():
        raise ValueError(
            f"these options give a grid whose step tables are not finite at step(s) "
            f"{np.flatnonzero(bad_rows)[:8].tolist()} of {len(ts_known)}; {culprits}"
        )


def check_init_dtype(dtype) -> jnp.dtype:
    """The sample dtype of a run: ``dtype``, or float32 (float64 with x64) when ``None``."""
    try:
        dtype = default_float_dtype() if dtype is None else jnp.dtype(dtype)
    except TypeError as err:
        raise OptionTypeError(
            f"dtype must be a floating-point dtype such as jnp.float32, got {dtype!r}"
        ) from err
    check_floating_dtype("dtype", dtype)
    return dtype


def check_not_finished(state: SchedulerState) -> np.ndarray | None:
    """Check the run has steps left and ``step_index`` is not negative: raise when it is concrete,
    a debug check when it is traced. Returns the concrete index, ``None`` when traced."""
    n = state.num_inference_steps
    index = concrete_value(state.step_index)
    if index is None:
        checkify.debug_check(
            state.step_index < n,
            f"the state has already taken all {n} steps (step_index {{}})",
            state.step_index,
        )
        checkify.debug_check(
            state.step_index >= 0, "step_index must be >= 0, got {}", state.step_index
        )
    elif index >= n:
        raise ValueError(f"the state has already taken all {n} steps; call init for a new run")
    elif index < 0:
        raise ValueError(f"step_index must be >= 0 (and below N = {n}), got {int(index)}")
    return index


def check_state(scheduler: Scheduler, state: Any) -> None:
    """Check ``state`` is a :class:`SchedulerState` built by ``scheduler``'s ``init`` (an equal
    configuration): a state of another class or configuration has other tables and history.

    Raises:
        TypeError: ``state`` is not a ``SchedulerState``.
        ValueError: it was built by another scheduler, or not by an ``init``.
    """
    name = type(scheduler).__name__
    if not isinstance(state, SchedulerState):
        raise OptionTypeError(
            f"state must be the SchedulerState that {name}.init built, got {type(state).__name__}"
        )
    if not isinstance(state.origin, Origin):
        raise ValueError(
            f"this state was not built by a scheduler's init (its origin is {state.origin!r}); "
            f"build it with {name}.init(...)"
        )
    builder = state.origin.scheduler
    if builder is scheduler or builder == scheduler:
        return
    if type(builder) is not type(scheduler):
        raise ValueError(
            f"this state was built by {type(builder).__name__}.init; {name} needs a state from "
            f"its own init (the tables and history differ)"
        )
    ours, theirs = scheduler.config, builder.config
    differing = [k for k in ours if ours[k] != theirs.get(k)]
    shown = ", ".join(f"{k}={theirs.get(k)!r} (this scheduler: {ours[k]!r})" for k in differing[:4])
    raise ValueError(
        f"this state was built by a {name} with other options: {shown}; build the state with "
        "this scheduler's init"
    )


def check_thresholds(thresholds: Thresholds) -> None:
    """Check the traced x0 limits a state carries (they may be swept through ``_replace``):
    ``clip_sample_range > 0``, ``dynamic_thresholding_ratio`` in ``[0, 1]``,
    ``sample_max_value > 0``; raises when concrete, a debug check when traced."""
    if not isinstance(thresholds, Thresholds):
        raise OptionTypeError(
            f"state.thresholds must be a jaxsched.Thresholds, got {type(thresholds).__name__}"
        )
    rules = (
        ("clip_sample_range", lambda v: v > 0, "be > 0"),
        ("dynamic_thresholding_ratio", lambda v: (v >= 0) & (v <= 1), "lie in [0, 1]"),
        ("sample_max_value", lambda v: v > 0, "be > 0"),
    )
    for name, holds, allowed in rules:
        value = getattr(thresholds, name)
        known = concrete_value(value)
        if known is None:
            checkify.debug_check(
                holds(value), f"thresholds.{name} must be {allowed}, got {{}}", value
            )
        elif np.ndim(known) != 0 or not holds(known):
            raise ValueError(f"thresholds.{name} must {allowed} (a scalar), got {known}")


def check_finite_array(name: str, value: Any, step_index: jax.Array) -> None:
    """``value`` is a floating-point array with finite values: a ``TypeError`` for a non-array
    or another dtype, a ``ValueError`` for concrete NaN/inf, a debug check where traced."""
    if value is None or isinstance(value, (str, bytes, tuple, list, dict)):
        raise OptionTypeError(f"{name} must be an array, got a {type(value).__name__}")
    check_floating_dtype(name, jnp.result_type(value))
    known = concrete_value(value)
    if known is None:
        checkify.debug_check(
            jnp.all(jnp.isfinite(value)), f"{name} has non-finite values at step {{}}", step_index
        )
    elif not np.all(np.isfinite(known)):
        index = concrete_value(step_index)
        where = "" if index is None or np.ndim(index) else f" at step {int(index)}"
        raise ValueError(f"{name} has non-finite values (NaN or inf){where}")


def check_timestep_type(t: Any) -> None:
    """``t`` is a real number or array (the state's current timestep), not a string."""
    if t is None or isinstance(t, (str, bytes)):
        raise OptionTypeError(
            f"t must be a number or array (state.timesteps[state.step_index]), got {t!r}"
        )
    dtype = jnp.result_type(t)
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise OptionTypeError(f"t must be a real number (integer or float), got dtype {dtype}")


def check_step_inputs(scheduler: Scheduler, state: SchedulerState, model_output, t, x) -> None:
    """Shape and dtype checks always; position checks where values are concrete, and the same
    checks plus finite inputs as :func:`jaxsched.checked` debug checks where they are traced.

    Raises:
        ValueError: a state another scheduler built (:func:`check_state`), a batched state
            outside ``jax.vmap``, mismatched shapes, a finished run, or a concrete ``t`` that is
            not the state's current timestep.
    """
    check_state(scheduler, state)
    if jnp.ndim(state.step_index) != 0 or jnp.ndim(state.timesteps) != 1:
        raise ValueError(
            f"the state is batched (step_index shape {jnp.shape(state.step_index)}); "
            "step a batch of states with jax.vmap"
        )
    check_thresholds(state.thresholds)
    for name, value in (("the sample", x), ("model_output", model_output)):
        check_finite_array(name, value, state.step_index)
    check_timestep_type(t)
    if jnp.shape(model_output) != jnp.shape(x):
        raise ValueError(
            f"model_output has shape {jnp.shape(model_output)} but the sample has shape "
            f"{jnp.shape(x)}"
        )
    if jnp.shape(x) != state.pred_original_sample.shape:
        raise ValueError(
            f"the sample has shape {jnp.shape(x)} but the state was initialised for shape "
            f"{state.pred_original_sample.shape}"
        )
    n = state.num_inference_steps
    index = check_not_finished(state)
    given, timesteps = concrete_value(t), concrete_value(state.timesteps)
    if index is None or given is None or timesteps is None:
        current = state.timesteps[jnp.minimum(state.step_index, n - 1)]
        checkify.debug_check(
            jnp.all(t == current),
            "t={} is not the state's current timestep {} (step {})",
            t,
            current,
            state.step_index,
        )
    elif not np.array_equal(given, timesteps[index]):
        raise ValueError(
            f"t={given} is not the state's current timestep {timesteps[index]} "
            f"(step {int(index)} of {n}); pass state.timesteps[state.step_index]"
        )


def current_row(coefficients: Any, step_index: jax.Array) -> Any:
    """Row ``step_index`` of every ``(N,)`` table; NaN past either end (so a traced overrun or
    negative index shows in the result rather than being clamped or wrapped silently)."""
    return jax.tree.map(
        lambda table: table.at[step_index].get(
            mode="fill", fill_value=jnp.nan, wrap_negative_indices=False
        ),
        coefficients,
    )


def advance(state: SchedulerState, pred_original_sample: jax.Array, **changes) -> SchedulerState:
    """The state after one step: next position, new x0 prediction, other fields changed."""
    return state._replace(
        step_index=state.step_index + 1,
        pred_original_sample=pred_original_sample.astype(state.pred_original_sample.dtype),
        **changes,
    )


def resolve_noise(stochastic: bool, key, noise, shape, dtype) -> jax.Array | None:
    """The standard normal noise of a stochastic step, from ``noise`` or drawn with ``key``.

    Returns ``None`` for a deterministic step. Raises ``ValueError`` when a stochastic step has
    neither, or both.
    """
    if not stochastic:
        return None
    if key is not None and noise is not None:
        raise ValueError("pass either key or noise to a stochastic step, not both")
    if noise is not None:
        if isinstance(noise, (str, bytes, tuple, list, dict)) or not jnp.issubdtype(
            jnp.result_type(noise), jnp.floating
        ):
            raise OptionTypeError(f"noise must be a floating-point array, got {noise!r:.60}")
        if jnp.shape(noise) != tuple(shape):
            raise ValueError(f"noise has shape {jnp.shape(noise)}, expected {tuple(shape)}")
        return jnp.asarray(noise).astype(dtype)
    if key is None:
        raise ValueError("this step is stochastic: pass key=jax.random.key(...) or noise=")
    return jax.random.normal(key, shape, dtype)
