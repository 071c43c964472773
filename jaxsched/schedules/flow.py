"""Flow-matching training levels: ``x = (1 - s) x0 + s eps`` for a flow sigma ``s`` in
``[0, 1]`` (rectified flow; Lipman et al. 2023, Liu et al. 2023), and the timestep shift that
spends more steps at high noise (Esser et al. 2024, "Scaling Rectified Flow Transformers",
eq. 23), fixed (``shift``) or resolution-dependent (``use_dynamic_shifting``, ``mu``)."""

from __future__ import annotations

import math
from typing import NamedTuple

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


TIME_SHIFT_TYPES = ("exponential", "linear")


class FlowSchedule(NamedTuple):
    """The training levels of a flow-matching model: ``(T,)`` flow sigmas, descending from 1
    (diffusers' ``FlowMatchEulerDiscreteScheduler.sigmas`` before ``set_timesteps``).

    Attributes:
        sigmas: ``s_k = shift (k / T) / (1 + (shift - 1) k / T)`` for ``k = T..1`` (unshifted
            with dynamic shifting, whose shift comes from ``mu`` at ``init``).
        shift: ``()`` the shift, which the step grid applies again (as diffusers does).
    """

    sigmas: jax.Array
    shift: jax.Array


def flow_schedule(num_train_timesteps: int = 1000, shift=1.0) -> FlowSchedule:
    """The :class:`FlowSchedule` of ``T`` training steps shifted by ``shift`` (may be traced,
    so a ``vmap`` over shifts batches runs). Built as diffusers builds it: float32
    ``linspace(1, T, T) / T``, reversed, then shifted."""
    steps = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1]
    sigmas = steps / np.float32(num_train_timesteps)
    if isinstance(shift, jax.core.Tracer):
        return FlowSchedule(shift_sigmas(jnp.asarray(sigmas), shift), jnp.asarray(shift))
    shifted = jnp.asarray(shift_sigmas(sigmas, float(shift)), jnp.float32)
    # The shift stays a float64 NumPy scalar: the grid shifts again in float64, as diffusers.
    return FlowSchedule(shifted, np.asarray(float(shift)))


def time_shift(sigmas, mu, kind: str):
    """The resolution-dependent shift of flow sigmas ``t`` (Esser et al. 2024, sec. 5.3.2):
    ``exp(mu) / (exp(mu) + 1 / t - 1)`` (``"exponential"``) or ``mu / (mu + 1 / t - 1)``
    (``"linear"``, where ``mu`` is the shift itself); any array module."""
    shift = flow_shift_of_mu(mu) if kind == "exponential" else mu
    return shift / (shift + (1 / sigmas - 1))


def stretch_to_terminal(sigmas, terminal: float):
    """Flow sigmas stretched so the last one is ``terminal`` (LTX-Video's ``shift_terminal``):
    ``1 - (1 - s) (1 - terminal) / (1 - s_last)``; any array module."""
    one_minus = 1 - sigmas
    return 1 - one_minus / (one_minus[-1] / (1 - terminal))


def calculate_shift(
    image_seq_len,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
):
    """``mu`` for an image of ``image_seq_len`` latent tokens, as the Flux and SD3 pipelines
    compute it: linear in the sequence length from ``base_shift`` at ``base_seq_len`` to
    ``max_shift`` at ``max_seq_len`` (pass it as ``init(..., mu=)``)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + (base_shift - slope * base_seq_len)
