"""Model-output conversion and x0 limits shared by every solver family.

Notation: a noisy sample is ``x = alpha x0 + sigma eps`` with ``alpha = sqrt(a_t)`` and
``sigma = sqrt(1 - a_t)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsched.state import Thresholds

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
FLOW_PREDICTION = "flow_prediction"


def data_and_noise(
    prediction_type: str, model_output: jax.Array, x: jax.Array, alpha, sigma
) -> tuple[jax.Array, jax.Array]:
    """Convert a model output to ``(x0, eps)`` predictions, both shaped like ``x``.

    - ``epsilon``: the model predicts ``eps``; ``x0 = (x - sigma eps) / alpha``
      (DDIM, Song et al. 2021, eq. 12).
    - ``sample``: the model predicts ``x0``; ``eps = (x - alpha x0) / sigma``.
    - ``v_prediction``: ``v = alpha eps - sigma x0`` (Salimans & Ho 2022), so
      ``x0 = alpha x - sigma v`` and ``eps = alpha v + sigma x``.
    - ``flow_prediction``: with ``alpha = 1 - sigma``, ``v = eps - x0`` (Lipman et al. 2023), so
      ``x0 = x - sigma v`` and ``eps = v + x0``.
    """
    if prediction_type == "epsilon":
        return (x - sigma * model_output) * reciprocal_or_zero(alpha), model_output
    if prediction_type == "sample":
        return model_output, noise_from_data(x, model_output, alpha, sigma)
    if prediction_type == "v_prediction":
        return alpha * x - sigma * model_output, alpha * model_output + sigma * x
    if prediction_type == FLOW_PREDICTION:
        x0 = x - sigma * model_output
        return x0, model_output + x0
    raise ValueError(
        f"prediction_type must be one of {list(PREDICTION_TYPES)}, got {prediction_type!r}"
    )


def reciprocal_or_zero(scale):
    """``1 / scale``, and 0 where ``scale`` is 0 (with a zero derivative there).

    At a level with ``alpha = 0`` (zero terminal SNR) an epsilon prediction says nothing about
    ``x0``, and at ``sigma = 0`` (the data end) a sample prediction says nothing about ``eps``;
    both are then taken as 0, where diffusers divides by zero (inf, or NaN for ``0 / 0``).
    """
    nonzero = scale != 0
    return jnp.where(nonzero, 1.0 / jnp.where(nonzero, scale, 1.0), 0.0)


def noise_from_data(x: jax.Array, x0: jax.Array, alpha, sigma) -> jax.Array:
    """``eps = (x - alpha x0) / sigma``: the noise consistent with ``x`` and ``x0`` (0 at
    ``sigma = 0``, see :func:`reciprocal_or_zero`)."""
    return (x - alpha * x0) * reciprocal_or_zero(sigma)


def dynamic_threshold(x0: jax.Array, ratio, max_value) -> jax.Array:
    """Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3), per leading-axis item.

    ``s`` is the ``ratio`` quantile (linear interpolation) of ``|x0|`` over all non-batch axes,
    clamped to ``[1, max_value]``; ``x0`` is clipped to ``[-s, s]`` and divided by ``s``.
    """
    if x0.size == 0:
        return x0  # an empty batch has nothing to threshold
    flat = x0.reshape(x0.shape[0] if x0.ndim else 1, -1)
    s = jnp.quantile(jnp.abs(flat), ratio, axis=1, keepdims=True)
    s = jnp.minimum(jnp.maximum(s, 1.0), max_value).astype(flat.dtype)
    return (jnp.clip(flat, -s, s) / s).reshape(x0.shape)


def limit_data(x0: jax.Array, thresholds: Thresholds, *, clip_sample: bool, thresholding: bool):
    """Dynamic thresholding when ``thresholding``, else clipping when ``clip_sample``."""
    if thresholding:
        return dynamic_threshold(
            x0, thresholds.dynamic_thresholding_ratio, thresholds.sample_max_value
        )
    if clip_sample:
        r = thresholds.clip_sample_range.astype(x0.dtype)
        return jnp.clip(x0, -r, r)
    return x0
