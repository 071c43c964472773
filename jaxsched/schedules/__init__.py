"""Training noise levels, the first stage of the data path (config -> training levels -> step
grid -> per-step tables -> update): variance-preserving schedules (betas -> alphas_cumprod,
:mod:`jaxsched.schedules.vp`), the flow-matching shift (:mod:`jaxsched.schedules.flow`), and
the dtype policy and forward noising they share (:mod:`jaxsched.schedules.common`)."""

from jaxsched.schedules.common import (
    check_noising_inputs,
    check_timesteps_type,
    compute_dtype,
    default_float_dtype,
    noised,
    per_sample,
)
from jaxsched.schedules.flow import (
    MU_LIMIT,
    TIME_SHIFT_TYPES,
    FlowSchedule,
    calculate_shift,
    flow_schedule,
    flow_shift_of_mu,
    shift_sigmas,
    stretch_to_terminal,
    time_shift,
)
from jaxsched.schedules.vp import (
    BETA_SCHEDULES,
    NoiseSchedule,
    add_noise,
    alphas_cumprod_at,
    cosine_betas,
    get_velocity,
    linear_betas,
    log_sigmas,
    noise_schedule,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
)

__all__ = [
    "BETA_SCHEDULES",
    "MU_LIMIT",
    "TIME_SHIFT_TYPES",
    "FlowSchedule",
    "NoiseSchedule",
    "add_noise",
    "alphas_cumprod_at",
    "calculate_shift",
    "check_noising_inputs",
    "check_timesteps_type",
    "compute_dtype",
    "cosine_betas",
    "default_float_dtype",
    "flow_schedule",
    "flow_shift_of_mu",
    "get_velocity",
    "linear_betas",
    "log_sigmas",
    "noise_schedule",
    "noised",
    "per_sample",
    "rescale_zero_terminal_snr",
    "scaled_linear_betas",
    "shift_sigmas",
    "stretch_to_terminal",
    "time_shift",
]
