"""Flow-matching training levels: ``x = (1 - s) x0 + s eps`` for a flow sigma ``s`` in
``[0, 1]`` (rectified flow; Lipman et al. 2023, Liu et al. 2023), and the timestep shift that
spends more steps at high noise (Esser et al. 2024, "Scaling Rectified Flow Transformers",
eq. 23), fixed (``shift``) or resolution-dependent (``use_dynamic_shifting``, ``mu``)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxsched._checks import OptionTypeError

# |mu| beyond which the dynamic flow shift exp(mu) leaves float64 (or rounds every sigma to 0/1).
MU_LIMIT = 700.0


def shift_sigmas(sigmas, shift):
    """``shift s / (1 + (shift - 1) s)``: flow sigmas moved toward noise by ``shift`` (eq. 23);
    any array module."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_shift_of_mu(mu):
    """The dynamic flow shift ``exp(mu)`` (Esser et al. 2024, sec. 5.3.2), in float64 like
    diffusers' ``np.exp(mu)`` when ``mu`` is concrete. ``mu`` must be a finite real scalar with
    ``|mu| <= 700`` (``exp`` stays a positive float64): raises when concrete, a debug check
    when traced."""
    if isinstance(mu, (str, bytes)) or np.ndim(mu) != 0:
        raise OptionTypeError(f"mu must be a real scalar, got {mu!r}")
    if isinstance(mu, jax.core.Tracer):
        checkify.debug_check(
            jnp.abs(mu) <= MU_LIMIT, f"mu must be finite with |mu| <= {MU_LIMIT}, got {{}}", mu
        )
        return jnp.exp(mu)
    try:
        value = float(np.asarray(mu))
    except (TypeError, ValueError) as err:
        raise OptionTypeError(f"mu must be a real scalar, got {mu!r}") from err
    if not abs(value) <= MU_LIMIT:
        raise ValueError(
            f"mu must be finite with |mu| <= {MU_LIMIT} (the flow shift is exp(mu); the Flux and "
            f"SD3 pipelines use about 0.5 to 1.2), got {value}"
        )
    return math.exp(value)
