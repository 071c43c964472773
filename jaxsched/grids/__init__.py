"""Step grids, the second stage of the data path: which timesteps the model is called at and
which noise levels each step joins, as one typed :class:`Grid` for every family.

- :mod:`~jaxsched.grids.timesteps`: timestep spacings (static integers, NumPy).
- :mod:`~jaxsched.grids.sigmas`: sigma spacings, custom grids, continuous timesteps.
- :mod:`~jaxsched.grids.levels`: the :class:`Level` and :class:`Grid` types.
- :mod:`~jaxsched.grids.vp`: the grids of variance-preserving schedulers (DDIM's, and the
  multistep solvers' forward, inverse and custom sigma grids).
"""

from jaxsched.grids.levels import Grid, Level, abar_levels, chained, flow_levels, vp_levels
from jaxsched.grids.sigmas import (
    SIGMA_SPACINGS,
    check_sigma_grid,
    continuous_timesteps,
    sigma_to_t,
)
from jaxsched.grids.timesteps import (
    BOUNDARY,
    TIMESTEP_SPACINGS,
    check_custom_timesteps,
    ddim_grid,
    spaced_timesteps,
)

__all__ = [
    "BOUNDARY",
    "SIGMA_SPACINGS",
    "TIMESTEP_SPACINGS",
    "Grid",
    "Level",
    "abar_levels",
    "chained",
    "check_custom_timesteps",
    "check_sigma_grid",
    "continuous_timesteps",
    "ddim_grid",
    "flow_levels",
    "sigma_to_t",
    "spaced_timesteps",
    "vp_levels",
]
