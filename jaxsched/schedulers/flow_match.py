"""``FlowMatchEulerDiscreteScheduler`` (diffusers' options and defaults) and its inverse, over
the flow Euler solver (:mod:`jaxsched.solvers.flow_euler`) and the flow-matching grid
(:mod:`jaxsched.grids.flow`)."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched._checks import (
    OptionTypeError,
    check_bool,
    check_choice,
    check_float,
    check_floating_dtype,
    check_int,
    check_scalar_in,
    concrete_value,
)
from jaxsched.grids.flow import FlowGridOptions, flow_heun_grid, flow_match_grid
from jaxsched.grids.levels import Grid
from jaxsched.schedulers.base import Scheduler
from jaxsched.schedules.flow import TIME_SHIFT_TYPES, FlowSchedule, calculate_shift, flow_schedule
from jaxsched.solvers.flow_euler import FlowEulerSolver
from jaxsched.solvers.flow_heun import FlowHeunSolver
from jaxsched.state import SchedulerState

#: diffusers' respacing flags of flow sigmas, in its order of precedence.
FLOW_SPACING_FLAGS = (
    ("use_karras_sigmas", "karras"),
    ("use_exponential_sigmas", "exponential"),
    ("use_beta_sigmas", "beta"),
)


def flow_training_schedule(
    num_train_timesteps: int, shift: float, schedule: FlowSchedule | None
) -> FlowSchedule:
    """``flow_schedule(num_train_timesteps, shift)``, or a given ``schedule`` checked: a
    :class:`FlowSchedule` of ``(num_train_timesteps,)`` sigmas and a scalar shift."""
    if schedule is None:
        return flow_schedule(num_train_timesteps, shift)
    if not isinstance(schedule, FlowSchedule):
        raise OptionTypeError(
            f"schedule must be a jaxsched.FlowSchedule (flow_schedule(...)), got "
            f"{type(schedule).__name__}"
        )
    if jnp.ndim(schedule.shift) != 0:
        raise ValueError(f"schedule.shift must be a scalar, got shape {jnp.shape(schedule.shift)}")
    if schedule.sigmas.shape != (num_train_timesteps,):
        raise ValueError(
            f"schedule.sigmas has shape {schedule.sigmas.shape} but this scheduler has "
            f"num_train_timesteps={num_train_timesteps}"
        )
    check_floating_dtype("schedule", schedule.sigmas.dtype)
    return schedule


@dataclasses.dataclass(frozen=True, kw_only=True)
class _FlowTrained(Scheduler):
    """A scheduler of flow-matching models: flow training levels shifted by ``shift``, and
    diffusers' ``scale_noise``."""

    shift: float = 1.0

    training_levels: ClassVar[str] = "flow"

    def _validate(self) -> None:
        super()._validate()
        check_float("shift", self.shift, low=0.0, low_open=True)

    def _training_shift(self) -> float:
        """The shift of the training sigmas."""
        return self.shift

    def training_schedule(self, schedule: FlowSchedule | None = None) -> FlowSchedule:
        """The config's training sigmas, or ``schedule`` checked (a
        :func:`jaxsched.flow_schedule`, whose shift may be traced)."""
        return flow_training_schedule(self.num_train_timesteps, self._training_shift(), schedule)

    def scale_noise(self, state: SchedulerState, sample, timestep, noise) -> jax.Array:
        """diffusers' flow forward process ``s noise + (1 - s) sample`` at the grid level of
        ``timestep`` (img2img): :meth:`add_noise` with diffusers' argument order."""
        return self.add_noise(state, sample, noise, timestep)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _FlowMatchBase(_FlowTrained):
    """Options shared by the flow-matching Euler schedulers (diffusers' names and defaults)."""

    use_dynamic_shifting: bool = False
    base_shift: float | None = 0.5
    max_shift: float | None = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    shift_terminal: float | None = None
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    time_shift_type: str = "exponential"

    def _validate(self) -> None:
        super()._validate()
        for flag in ("use_dynamic_shifting", *dict(FLOW_SPACING_FLAGS)):
            check_bool(flag, getattr(self, flag))
        for name in ("base_shift", "max_shift"):
            if getattr(self, name) is not None:
                check_float(name, getattr(self, name))
        check_int("base_image_seq_len", self.base_image_seq_len, minimum=1)
        check_int("max_image_seq_len", self.max_image_seq_len, minimum=1)
        if self.shift_terminal is not None:
            check_float("shift_terminal", self.shift_terminal, low=0.0, high=1.0, high_open=True)
        check_choice("time_shift_type", self.time_shift_type, TIME_SHIFT_TYPES)
        if sum(getattr(self, flag) for flag, _ in FLOW_SPACING_FLAGS) > 1:
            raise ValueError(
                "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas can be on"
            )

    # -- what the family says ------------------------------------------------------------------

    @property
    def solver(self) -> FlowEulerSolver:
        return FlowEulerSolver()

    def _training_shift(self) -> float:
        """``shift``, or 1 with dynamic shifting (``mu`` shifts the grid at ``init``)."""
        return 1.0 if self.use_dynamic_shifting else self.shift

    @property
    def sigma_spacing(self) -> str | None:
        """The respacing diffusers applies to the shifted sigmas (``None``: none)."""
        for flag, name in FLOW_SPACING_FLAGS:
            if getattr(self, flag):
                return name
        return None

    def grid_options(self) -> FlowGridOptions:
        return FlowGridOptions(
            num_train_timesteps=self.num_train_timesteps,
            dynamic=self.use_dynamic_shifting,
            time_shift_type=self.time_shift_type,
            shift_terminal=self.shift_terminal,
            spacing=self.sigma_spacing,
            invert_sigmas=getattr(self, "invert_sigmas", False),
        )

    def _check_grid_arguments(self, num_inference_steps, timesteps, sigmas) -> None:
        """As diffusers' ``set_timesteps``: ``N``, custom ``sigmas`` or ``timesteps`` (each
        ``(N,)``), or both of the two (of one length; ``N`` too when given)."""
        lengths = {
            name: len(value)
            for name, value in (("sigmas", sigmas), ("timesteps", timesteps))
            if value is not None and np.ndim(value) == 1
        }
        if not lengths and sigmas is None and timesteps is None:
            self.check_num_inference_steps(num_inference_steps)
            return
        if num_inference_steps is not None:
            check_int("num_inference_steps", num_inference_steps, minimum=1)
            lengths["num_inference_steps"] = num_inference_steps
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"sigmas, timesteps and num_inference_steps differ in length: {lengths}"
            )

    def build_grid(self, schedule, num_inference_steps, *, timesteps, sigmas, mu) -> Grid:
        """diffusers' grid (:func:`~jaxsched.grids.flow.flow_match_grid`); ``mu`` is needed
        exactly with ``use_dynamic_shifting`` (exponential: the shift is ``exp(mu)``; linear:
        ``mu`` itself, which must be > 0)."""
        if self.use_dynamic_shifting and mu is None:
            raise ValueError(
                "use_dynamic_shifting=True needs mu at init (e.g. "
                "sched.mu_for_image_seq_len(image_seq_len))"
            )
        if not self.use_dynamic_shifting and mu is not None:
            raise ValueError("mu is only used with use_dynamic_shifting=True")
        if mu is not None and self.time_shift_type == "linear":
            known = concrete_value(mu)
            if known is not None and not (known.ndim == 0 and 0 < float(known) < math.inf):
                raise ValueError("mu must be a finite number > 0 with time_shift_type='linear'")
        return flow_match_grid(
            self.grid_options(),
            schedule,
            num_inference_steps,
            sigmas=sigmas,
            timesteps=timesteps,
            mu=mu,
            inverse=self.direction == "to_noise" and not self.grid_options().invert_sigmas,
        )

    # -- diffusers' helpers -----------------------------------------------------------------------

    def mu_for_image_seq_len(self, image_seq_len):
        """``mu`` for ``image_seq_len`` latent tokens from this config's ``base_shift``,
        ``max_shift``, ``base_image_seq_len`` and ``max_image_seq_len``, as the Flux and SD3
        pipelines' ``calculate_shift`` computes it."""
        if self.base_shift is None or self.max_shift is None:
            raise ValueError("mu_for_image_seq_len needs base_shift and max_shift in the config")
        return calculate_shift(
            image_seq_len,
            self.base_image_seq_len,
            self.max_image_seq_len,
            self.base_shift,
            self.max_shift,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlowMatchEulerDiscreteScheduler(_FlowMatchBase):
    """Euler sampling of a flow-matching model (SD3, Flux, Wan, ...), diffusers'
    ``FlowMatchEulerDiscreteScheduler`` with its defaults.

    The model predicts the velocity ``v = eps - x0`` at ``t = s T``; a step is
    ``x + (s' - s) v``, or with ``stochastic_sampling`` the x0 prediction re-noised to ``s'``
    with fresh noise (``key=`` or ``noise=``). ``invert_sigmas`` walks ``1 - s`` toward noise.

    Example::

        sched = jaxsched.FlowMatchEulerDiscreteScheduler(shift=3.0)
        state = sched.init(28, shape=x.shape)
        x = jaxsched.sample(sched, state, velocity_model, x)
    """

    invert_sigmas: bool = False
    stochastic_sampling: bool = False

    inverse_class_name: ClassVar[str] = "FlowMatchEulerInverseScheduler"
    direction_only_options: ClassVar[tuple[str, ...]] = ("stochastic_sampling",)

    def _validate(self) -> None:
        super()._validate()
        check_bool("invert_sigmas", self.invert_sigmas)
        check_bool("stochastic_sampling", self.stochastic_sampling)

    @property
    def solver(self) -> FlowEulerSolver:
        return FlowEulerSolver(stochastic_sampling=self.stochastic_sampling)

    @property
    def direction(self) -> str:  # type: ignore[override]
        """``"to_noise"`` with ``invert_sigmas`` (its grid rises to sigma 1), else
        ``"to_data"``."""
        return "to_noise" if self.invert_sigmas else "to_data"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlowMatchEulerInverseScheduler(_FlowMatchBase):
    """Flow-matching Euler inversion (data to noise), a jaxsched class: the forward scheduler's
    levels walked from 0 up, the model called at the start of each step (``t = s T``, ``t = 0``
    first), ``x' = x + (s' - s) v``: an ODE, so it has no ``stochastic_sampling`` (``inverse()``
    of a stochastic sampler drops it)."""

    direction: ClassVar[str] = "to_noise"
    inverse_class_name: ClassVar[str] = "FlowMatchEulerDiscreteScheduler"
    extension_options: ClassVar[tuple[str, ...]] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlowMatchHeunDiscreteScheduler(_FlowTrained):
    """Heun sampling of a flow-matching model, diffusers' ``FlowMatchHeunDiscreteScheduler``
    with its defaults: two model calls per step (``order = 2``), so ``state.timesteps`` lists
    ``2N - 1`` calls, as diffusers' ``timesteps`` does (the last step is Euler to 0). It has no
    inverse class: invert flow models with ``FlowMatchEulerInverseScheduler``.

    ``step`` takes Karras et al.'s churn: ``s_churn`` (0: deterministic; may be traced, then
    ``key`` or ``noise`` is required), ``s_tmin``, ``s_tmax``, ``s_noise``.
    """

    order: ClassVar[int] = 2
    #: A predictor and its corrector per scan iteration: XLA then passes the history through
    #: the unrolled pair instead of copying it every call (25 steps of (16, 4, 64, 64): 14.0 ms
    #: at 1, 3.3 ms at 2, 3.2 ms at 4, 6.2 ms at 8 on 2 CPU cores).
    scan_unroll: ClassVar[int] = 2
    step_params: ClassVar[dict] = {
        "s_churn": 0.0,
        "s_tmin": 0.0,
        "s_tmax": math.inf,
        "s_noise": 1.0,
    }

    @property
    def solver(self) -> FlowHeunSolver:
        return FlowHeunSolver()

    def build_grid(self, schedule, num_inference_steps, *, timesteps, sigmas, mu) -> Grid:
        """diffusers' grid, one row per model call (:func:`~jaxsched.grids.flow.flow_heun_grid`);
        its ``set_timesteps`` takes only ``num_inference_steps``."""
        given = [
            name
            for name, v in (("timesteps", timesteps), ("sigmas", sigmas), ("mu", mu))
            if v is not None
        ]
        if given:
            raise ValueError(
                f"FlowMatchHeunDiscreteScheduler takes no custom {given[0]} (diffusers' "
                "set_timesteps takes only num_inference_steps)"
            )
        options = FlowGridOptions(
            num_train_timesteps=self.num_train_timesteps,
            dynamic=False,
            time_shift_type="exponential",
            shift_terminal=None,
            spacing=None,
            invert_sigmas=False,
        )
        return flow_heun_grid(options, schedule, num_inference_steps)

    def check_step_values(self, params: dict) -> None:
        """``s_churn >= 0`` and the other churn options real scalars (or traced)."""
        check_scalar_in("s_churn", params["s_churn"], 0.0, math.inf)
        for name in ("s_tmin", "s_tmax", "s_noise"):
            check_scalar_in(name, params[name], -math.inf, math.inf)
