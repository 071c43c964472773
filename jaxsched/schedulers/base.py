"""What every scheduler shares, written once: a frozen diffusers-style config, its declared
capabilities, and ``init`` / ``step`` / ``add_noise`` over the family's grid and solver.

A scheduler class is an options class: its fields are diffusers' keyword arguments, and it
says three things, each in one method: which training levels it uses
(:meth:`Scheduler.training_schedule`), which step grid its options describe
(:meth:`Scheduler.build_grid`, from :mod:`jaxsched.grids`) and which solver value runs its
update (:attr:`Scheduler.solver`, from :mod:`jaxsched.solvers`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from jaxsched._checks import (
    OptionTypeError,
    check_bool,
    check_choice,
    check_float,
    check_floating_dtype,
    check_int,
    concrete_value,
    plain_python,
    real_array,
)
from jaxsched.grids.levels import Grid
from jaxsched.schedulers.checks import (
    advance,
    check_begin_index,
    check_built_state,
    check_init_dtype,
    check_init_shape,
    check_schedule_values,
    check_state,
    check_step_inputs,
    current_row,
    resolve_noise,
)
from jaxsched.schedules import (
    BETA_SCHEDULES,
    NoiseSchedule,
    add_noise,
    check_noising_inputs,
    check_timesteps_type,
    compute_dtype,
    default_float_dtype,
    noise_schedule,
    noised,
)
from jaxsched.solvers.base import Solver
from jaxsched.state import Origin, SchedulerState

CONFIG_NAME = "scheduler_config.json"
#: The diffusers release whose options, defaults and numbers jaxsched reproduces.
DIFFUSERS_VERSION = "0.42.1"


class SchedulerConfig(dict):
    """A scheduler's options (a plain ``dict``) that also remembers the class they belong to,
    ``scheduler_class``, as diffusers' in-memory ``scheduler.config`` does without a
    ``_class_name`` key."""

    def __init__(self, scheduler_class: str):
        super().__init__()
        self.scheduler_class = scheduler_class


class Capabilities(NamedTuple):
    """What a configured scheduler can do, declared instead of guessed from its name.

    Attributes:
        direction: ``"to_data"`` (sampling) or ``"to_noise"`` (inversion).
        model_calls_per_step: diffusers' ``order``: how many ``step`` calls (model calls) one
            step of the method takes (2 for Heun-type schedulers).
        history: how many previous model outputs a step uses (0 for one-step solvers, which
            :func:`jaxsched.exact_invert` can invert exactly).
        stochastic: whether a step draws noise with these options and the default step
            arguments (DDIM's ``eta = 0``: no; an ``sde-*`` DPM-Solver: yes).
        final_sigma: the grid sigma a forward run ends at, ``"zero"`` or ``"sigma_min"``.
        levels: ``"vp"`` (variance preserving) or ``"flow"`` (flow matching) grid sigmas.
    """

    direction: Literal["to_data", "to_noise"]
    model_calls_per_step: int
    history: int
    stochastic: bool
    final_sigma: Literal["zero", "sigma_min"]
    levels: Literal["vp", "flow"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Scheduler:
    """Base of every scheduler class.

    Subclasses are frozen dataclasses whose fields are exactly the diffusers keyword arguments,
    with diffusers' defaults. Instances are hashable, so ``jax.jit(sched.step)`` caches per
    configuration.
    """

    num_train_timesteps: int = 1000

    #: Name of the scheduler ``inverse()`` returns (``None``: the class has none).
    inverse_class_name: ClassVar[str | None] = None
    #: ``"to_data"`` (sampling) or ``"to_noise"`` (inversion).
    direction: ClassVar[str] = "to_data"
    #: The training levels of the models the class samples: ``"vp"`` (betas) or ``"flow"``.
    training_levels: ClassVar[str] = "vp"
    #: Model calls per step (diffusers' ``order``; 1 for every multistep scheduler too).
    order: ClassVar[int] = 1
    #: Standard deviation of the starting noise (diffusers' ``init_noise_sigma``).
    init_noise_sigma: ClassVar[float] = 1.0
    #: Keyword arguments of ``step`` beyond ``key`` / ``noise``, with their defaults.
    step_params: ClassVar[dict[str, Any]] = {}
    #: ``add_noise`` noises to the training level of ``t`` (``"training"``) or to the grid level
    #: the run calls the model at ``t`` with (``"grid"``), as diffusers' class does.
    add_noise_levels: ClassVar[str] = "grid"
    #: Steps per ``lax.scan`` iteration in :func:`jaxsched.sample` (a compiled-loop detail).
    scan_unroll: ClassVar[int] = 1
    #: Options with no meaning in the other direction: ``inverse()`` drops them silently.
    direction_only_options: ClassVar[tuple[str, ...]] = ()
    #: Options jaxsched adds to diffusers' (opt-in fixes; defaults reproduce diffusers).
    extension_options: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, plain_python(getattr(self, field.name)))
        self._normalize()
        self._validate()

    def _normalize(self) -> None:
        """Bring options to their canonical form before validation (subclasses extend it)."""

    def _validate(self) -> None:
        """Check every option; subclasses extend it. Raises ``ValueError`` / ``TypeError``."""
        check_int("num_train_timesteps", self.num_train_timesteps, minimum=1)

    # -- what a family says ----------------------------------------------------------------------

    @property
    def solver(self) -> Solver:
        """The solver value that runs this configuration's update (per family)."""
        raise NotImplementedError

    def training_schedule(self, schedule=None):
        """The run's training levels: ``schedule`` checked, or the config's (per family)."""
        raise NotImplementedError

    def build_grid(self, schedule, num_inference_steps, *, timesteps, sigmas, mu) -> Grid:
        """The run's :class:`~jaxsched.grids.levels.Grid` over the training levels (per
        class)."""
        raise NotImplementedError

    @property
    def capabilities(self) -> Capabilities:
        """What this configuration does (see :class:`Capabilities`)."""
        return Capabilities(
            direction=self.direction,
            model_calls_per_step=self.order,
            history=self.solver.history,
            stochastic=self.solver.stochastic(self.step_params),
            final_sigma=self._final_sigma(),
            levels=self._levels_kind(),
        )

    def _final_sigma(self) -> str:
        return "zero"

    def _levels_kind(self) -> str:
        """The kind of the grid's levels: the training levels' unless a class maps them."""
        return self.training_levels

    # -- configuration ---------------------------------------------------------------------------

    @property
    def config(self) -> SchedulerConfig:
        """The configuration as a plain dict with diffusers' keys (a :class:`SchedulerConfig`,
        which also remembers its class, so ``jaxsched.from_config(sched.config)`` needs no
        ``_class_name``)."""
        config = SchedulerConfig(type(self).__name__)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Scheduler):  # UniPC's solver_p: its own config, JSON-ready
                value = value.to_config()
            config[f.name] = list(value) if isinstance(value, tuple) else value
        return config

    def to_config(self) -> dict[str, Any]:
        """The config as diffusers writes ``scheduler_config.json``: ``_class_name`` and the
        diffusers version whose options these are, then every option, less jaxsched's extension
        options where they are at their defaults (so diffusers loads it without warnings)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        options = {
            k: v
            for k, v in self.config.items()
            if k not in self.extension_options or v != defaults[k]
        }
        return {
            "_class_name": type(self).__name__,
            "_diffusers_version": DIFFUSERS_VERSION,
            **options,
        }

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> Scheduler:
        """This class from a diffusers config (dict, JSON file or model directory), options in
        ``overrides`` replacing the config's: diffusers' ``DDIMScheduler.from_config(cfg,
        timestep_spacing="trailing")``. See :func:`jaxsched.from_config`."""
        from jaxsched.config import from_config, load_config

        return from_config({**load_config(config), **overrides}, cls=cls)

    def save_config(self, path: str | os.PathLike) -> Path:
        """Write ``to_config()`` as JSON; a directory gets ``scheduler_config.json`` inside."""
        if not isinstance(path, (str, os.PathLike)):
            raise OptionTypeError(f"path must be a str or os.PathLike, got {path!r}")
        path = Path(path)
        if path.suffix != ".json":
            path.mkdir(parents=True, exist_ok=True)
            path = path / CONFIG_NAME
        path.write_text(json.dumps(self.to_config(), indent=2, sort_keys=True) + "\n")
        return path

    def replace(self, **changes: Any) -> Scheduler:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def inverse(self) -> Scheduler:
        """The matching scheduler that walks the same grid in the other direction, with every
        option the two share. Options the other class lacks are dropped, with one warning that
        lists those set to a non-default value."""
        from jaxsched.schedulers import SCHEDULERS

        if self.inverse_class_name is None:
            raise ValueError(
                f"{type(self).__name__} has no inverse scheduler (invert with one whose "
                "capabilities say it has: its inverse_class_name is set)"
            )
        target = SCHEDULERS[self.inverse_class_name]
        names = {f.name for f in dataclasses.fields(target)}
        dropped = sorted(
            f.name
            for f in dataclasses.fields(self)
            if f.name not in names
            and f.name not in self.direction_only_options
            and getattr(self, f.name) != f.default
        )
        if dropped:
            warnings.warn(
                f"{target.__name__} has no option(s) {dropped}; the inverse runs without them",
                stacklevel=2,
            )
        shared = {k: v for k, v in self.config.items() if k in names}
        return target(**shared, **self._inverse_needs())

    def _inverse_needs(self) -> dict[str, Any]:
        """Options ``inverse()`` must set beyond the shared ones for the result to be valid."""
        return {}

    # -- init, step, add_noise: once for every family --------------------------------------------

    def check_num_inference_steps(self, num_inference_steps: int) -> None:
        check_int("num_inference_steps", num_inference_steps, minimum=1)
        if num_inference_steps > self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} cannot exceed "
                f"num_train_timesteps={self.num_train_timesteps}"
            )

    def _check_grid_arguments(self, num_inference_steps, timesteps, sigmas) -> None:
        """Exactly one of the three ways to give a grid; the step count checked when it is the
        one (or when none is given, so ``init(None, ...)`` names ``num_inference_steps``)."""
        given = {"timesteps": timesteps, "sigmas": sigmas}
        custom = [name for name, value in given.items() if value is not None]
        if len(custom) > 1 or (custom and num_inference_steps is not None):
            raise ValueError(f"pass exactly one of num_inference_steps, {', '.join(given)}")
        if not custom:
            self.check_num_inference_steps(num_inference_steps)

    def grid(
        self,
        num_inference_steps: int | None = None,
        schedule=None,
        *,
        timesteps=None,
        sigmas=None,
        mu=None,
    ) -> Grid:
        """The :class:`~jaxsched.grids.levels.Grid` a run with these arguments steps over (the
        same arguments as :meth:`init`; pure, and traceable in the schedule and sigmas)."""
        self._check_grid_arguments(num_inference_steps, timesteps, sigmas)
        return self.build_grid(
            self.training_schedule(schedule),
            num_inference_steps,
            timesteps=timesteps,
            sigmas=sigmas,
            mu=mu,
        )

    def init(
        self,
        num_inference_steps: int | None,
        shape: tuple[int, ...],
        dtype=None,
        schedule=None,
        *,
        timesteps=None,
        sigmas=None,
        mu=None,
        begin_index: int | None = None,
    ) -> SchedulerState:
        """The state of an ``N``-step run on samples of ``shape`` and ``dtype``.

        Args:
            num_inference_steps: ``N``; ``None`` when ``timesteps`` or ``sigmas`` are given.
            shape, dtype: of the samples (dtype defaults to float32, float64 with x64).
            schedule: replaces the config's training levels (a :func:`jaxsched.noise_schedule`;
                may be traced, so ``jax.vmap(lambda s: sched.init(N, shape, schedule=s))``
                batches schedules).
            timesteps: custom descending integer timesteps (the multistep forward classes).
            sigmas: a custom ``(N + 1,)`` grid of grid sigmas (may be traced, e.g. a learned
                grid): descending for sampling (its last value the final sigma, which may be
                0), ascending for inversion. The model is then called at continuous timesteps.
            mu: with ``use_dynamic_shifting``, the flow shift is ``exp(mu)`` (may be traced).
            begin_index: start the run at this step (img2img; diffusers' ``set_begin_index``):
                ``step_index`` starts there, a multistep solver warms up from there (its first
                step is first order), ``lower_order_final`` still counts all ``N`` steps, and
                :meth:`add_noise` uses the current step's level.
        """
        shape = check_init_shape(shape)
        dtype = check_init_dtype(dtype)
        schedule = self.training_schedule(schedule)
        self._check_grid_arguments(num_inference_steps, timesteps, sigmas)
        grid = self.build_grid(
            schedule, num_inference_steps, timesteps=timesteps, sigmas=sigmas, mu=mu
        )
        start = check_begin_index(begin_index, grid.timesteps.shape[0])
        if start % self.order:
            raise ValueError(
                f"begin_index={start} is inside a step: {type(self).__name__} makes "
                f"{self.order} model calls per step, so a run begins at a multiple of "
                f"{self.order} (begin_index_for_strength gives one)"
            )
        solver = self.solver
        state = SchedulerState(
            timesteps=grid.timesteps,
            step_index=jnp.asarray(start, jnp.int32),
            coefficients=solver.tables(grid, start),
            schedule=schedule,
            thresholds=solver.thresholds(grid.start.alpha.dtype),
            pred_original_sample=jnp.zeros(shape, dtype),
            history=solver.initial_history(shape, dtype),
            origin=Origin(self),
            begin_index=None if begin_index is None else jnp.asarray(start, jnp.int32),
        )
        check_built_state(self, state, "" if mu is None else f", mu={mu!r}")
        return state

    def check_step_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """This class's ``step`` keyword arguments with their defaults filled in; a
        ``TypeError`` naming any it does not take."""
        unknown = sorted(set(params) - set(self.step_params))
        if unknown:
            allowed = sorted(self.step_params) or "none besides key and noise"
            raise OptionTypeError(
                f"{type(self).__name__}.step takes no argument(s) {unknown}; its step options "
                f"are {allowed}"
            )
        return {**self.step_params, **params}

    def prepare_model_output(self, model_output, x):
        """The model output the update uses (a family may drop extra channels)."""
        return model_output

    def step(
        self,
        state: SchedulerState,
        model_output: jax.Array,
        t,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        noise: jax.Array | None = None,
        **params: Any,
    ) -> tuple[SchedulerState, jax.Array]:
        """One step: ``(state, x_t) -> (next state, the next sample)``.

        Args:
            state: from :meth:`init`; its ``step_index`` says which step this is.
            model_output: the model's output at ``(x, t)``, shaped like ``x``.
            t: ``state.timesteps[state.step_index]`` (checked when concrete).
            x: the current sample ``(batch, ...)``.
            key: PRNG key for the noise of a stochastic step.
            noise: the standard normal noise itself (instead of ``key``).
            **params: the class's step options (``step_params``; DDIM's ``eta`` and
                ``use_clipped_model_output``).

        Returns:
            ``(state, x_next)``; ``state.pred_original_sample`` holds this step's x0.
        """
        params = self.check_step_params(params)
        model_output = self.prepare_model_output(model_output, x)
        check_step_inputs(self, state, model_output, t, x)
        self.check_step_values(params)
        solver = self.solver
        dtype = compute_dtype(jnp.result_type(x), table_dtype(state))
        noise = resolve_noise(solver.stochastic(params), key, noise, jnp.shape(x), dtype)
        history = jax.tree.map(lambda m: m.astype(dtype), state.history)
        x_next, x0, history = solver.update(
            current_row(state.coefficients, state.step_index),
            jnp.asarray(x).astype(dtype),
            jnp.asarray(model_output).astype(dtype),
            history,
            noise,
            state.thresholds,
            params,
        )
        history = jax.tree.map(lambda m, old: m.astype(old.dtype), history, state.history)
        return advance(state, x0, history=history), x_next.astype(jnp.result_type(x))

    def check_step_values(self, params: dict[str, Any]) -> None:
        """Check the values of the step options (per class; none by default)."""

    def scale_model_input(self, state: SchedulerState, x: jax.Array, t=None) -> jax.Array:
        """``x`` unchanged: these schedulers need no input scaling (kept for interchangeability
        with diffusers pipelines, which call it before the model)."""
        check_state(self, state)
        return x

    def add_noise(self, state: SchedulerState, original_samples, noise, timesteps) -> jax.Array:
        """``alpha x0 + sigma noise`` at the level of each timestep, as this diffusers class
        does: the training level of ``t`` (``add_noise_levels="training"``, DDIM), or the grid
        level the run calls the model at ``t`` with (``"grid"``). There, without a
        ``begin_index``, each of the ``(B,)`` (or scalar) ``timesteps`` is looked up in
        ``state.timesteps`` (:func:`lookup_timesteps`); a state built with
        ``init(begin_index=...)`` uses the level of its current step for every timestep
        (before the run: the begin index, img2img; during it: the step, inpainting). Computed
        in at least float32 and returned in the samples' dtype; jittable."""
        check_state(self, state)
        check_timesteps_type(timesteps)
        check_noising_inputs(original_samples, noise, timesteps)
        if self.add_noise_levels == "training":
            return add_noise(state.schedule, original_samples, noise, timesteps)
        self._check_grid_timestep_range(timesteps)
        if state.begin_index is None:
            index = lookup_timesteps(state.timesteps, timesteps)
        else:
            index = jnp.broadcast_to(state.step_index, jnp.shape(jnp.ravel(timesteps)))
        level = jax.tree.map(lambda table: table[index], state.coefficients.start)
        return noised(original_samples, noise, level.alpha, level.sigma, table_dtype(state))

    def _check_grid_timestep_range(self, timesteps) -> None:
        """Timesteps must be training timesteps: ``0..T-1`` (``0..T`` for flow sigmas, whose
        timestep is ``sigma * T``); raises when concrete, a debug check when traced."""
        top = self.num_train_timesteps - (0 if self._levels_kind() == "flow" else 1)
        t = jnp.asarray(timesteps)
        known = concrete_value(timesteps)
        if known is None:
            checkify.debug_check(
                jnp.all((t >= 0) & (t <= top)), f"timesteps must lie in 0..{top}, got {{}}", t
            )
        elif not ((known >= 0) & (known <= top)).all():
            raise ValueError(f"timesteps must lie in 0..{top}, got {known.ravel().tolist()[:8]}")


def table_dtype(state: SchedulerState):
    """The precision of a run's tables (float32, or float64 with x64), whatever the family."""
    return state.coefficients.start.alpha.dtype


def lookup_timesteps(grid: jax.Array, timesteps) -> jax.Array:
    """The position of each of ``timesteps`` ``(B,)`` (or a scalar) in ``grid`` ``(N,)`` as
    diffusers' ``index_for_timestep`` finds it: the second match when a timestep repeats, the
    last step when it is missing. A comparison, not a search, so it is jittable."""
    matches = jnp.reshape(jnp.asarray(timesteps), (-1, 1)) == grid[None, :]
    first = jnp.argmax(matches, axis=1)
    second = jnp.argmax(matches.at[jnp.arange(matches.shape[0]), first].set(False), axis=1)
    count = jnp.sum(matches, axis=1)
    return jnp.where(count == 0, grid.shape[0] - 1, jnp.where(count > 1, second, first))


@dataclasses.dataclass(frozen=True, kw_only=True)
class VPScheduler(Scheduler):
    """A scheduler over a variance-preserving training schedule: betas -> alphas_cumprod
    (:mod:`jaxsched.schedules.vp`)."""

    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None

    #: Classes whose diffusers counterpart has the option override this with a field.
    rescale_betas_zero_snr: ClassVar[bool] = False

    def _normalize(self) -> None:
        super()._normalize()
        if self.trained_betas is not None:
            betas = real_array("trained_betas", self.trained_betas)
            object.__setattr__(self, "trained_betas", tuple(betas.ravel().tolist()))
            if betas.ndim != 1:
                raise ValueError(f"trained_betas must be 1-D, got shape {betas.shape}")

    def _validate(self) -> None:
        super()._validate()
        if self.trained_betas is None:
            check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        elif not isinstance(self.beta_schedule, str):  # diffusers ignores it beside trained_betas
            raise OptionTypeError(f"beta_schedule must be a str, got {self.beta_schedule!r}")
        check_float("beta_start", self.beta_start, low=0.0, high=1.0, high_open=True)
        check_float("beta_end", self.beta_end, low=0.0, high=1.0, high_open=True)
        check_bool("rescale_betas_zero_snr", self.rescale_betas_zero_snr)
        if self.trained_betas is not None:
            if not all(0 <= b < 1 for b in self.trained_betas):
                raise ValueError("trained_betas must be a 1-D sequence of values in [0, 1)")
            if len(self.trained_betas) != self.num_train_timesteps:
                raise ValueError(
                    f"trained_betas has {len(self.trained_betas)} entries but "
                    f"num_train_timesteps={self.num_train_timesteps}"
                )

    def noise_schedule(self, schedule: NoiseSchedule | None = None) -> NoiseSchedule:
        """``schedule`` after checking it fits, or the one the config describes.

        A given schedule is promoted to at least float32 (float64 with x64), so low-precision
        or stale-precision tables never set the precision of the update.
        """
        if schedule is None:
            return noise_schedule(
                self.beta_schedule,
                beta_start=self.beta_start,
                beta_end=self.beta_end,
                num_train_timesteps=self.num_train_timesteps,
                trained_betas=self.trained_betas,
                rescale_betas_zero_snr=self.rescale_betas_zero_snr,
            )
        if not isinstance(schedule, NoiseSchedule):
            raise OptionTypeError(
                f"schedule must be a jaxsched.NoiseSchedule, got {type(schedule).__name__}"
            )
        expected = (self.num_train_timesteps,)
        if schedule.alphas_cumprod.shape != expected or schedule.betas.shape != expected:
            raise ValueError(
                f"schedule arrays have shape {schedule.alphas_cumprod.shape} but this scheduler "
                f"has num_train_timesteps={self.num_train_timesteps}"
            )
        check_floating_dtype("schedule", schedule.alphas_cumprod.dtype)
        check_schedule_values(schedule)
        dtype = compute_dtype(schedule.alphas_cumprod.dtype, default_float_dtype())
        return jax.tree.map(lambda table: jnp.asarray(table, dtype), schedule)

    def training_schedule(self, schedule: NoiseSchedule | None = None) -> NoiseSchedule:
        """The config's schedule, or ``schedule`` checked (:meth:`noise_schedule`)."""
        return self.noise_schedule(schedule)
