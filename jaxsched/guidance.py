"""Model-function helpers: classifier-free guidance and conditioning adapters. Each returns a
``model_fn(x, t)`` that :func:`jaxsched.sample` and every ``step`` loop accept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched._checks import OptionTypeError, check_callable, concrete_value

ConditionalModel = Callable[[jax.Array, jax.Array, Any], jax.Array]


def with_conditioning(
    model: ConditionalModel, conditioning: Any, *, batch_timesteps: bool = True
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Adapt a denoiser ``model(x, t, conditioning)`` to ``model_fn(x, t)``.

    With ``batch_timesteps`` the scalar ``t`` a scheduler passes is broadcast to ``(batch,)``,
    the shape most denoisers take.
    """

    check_callable("model", model, "(x, t, conditioning) -> model output", None, None, None)

    def model_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        if batch_timesteps:
            t = jnp.broadcast_to(t, jnp.shape(x)[:1])
        return model(x, t, conditioning)

    return model_fn


def check_guidance_scalar(name: str, value: Any, interval: tuple[float, float] | None = None):
    """A real scalar (traced allowed); when concrete, finite and inside ``interval``."""
    if isinstance(value, (str, bytes)) or value is None:
        raise OptionTypeError(f"{name} must be a real number, got {value!r}")
    dtype = jnp.result_type(value)
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise OptionTypeError(f"{name} must be a real number, got dtype {dtype}")
    known = concrete_value(value)
    if known is None:
        return
    if not np.all(np.isfinite(known)):
        raise ValueError(f"{name} must be finite, got {known}")
    if interval is not None and not np.all((known >= interval[0]) & (known <= interval[1])):
        raise ValueError(f"{name} must lie in [{interval[0]:g}, {interval[1]:g}], got {known}")


def _item_std(x: jax.Array) -> jax.Array:
    """Standard deviation over all but the leading axis (kept), 0 for a constant item, with
    finite gradients there too."""
    axes = tuple(range(1, x.ndim))
    variance = jnp.var(x, axis=axes, keepdims=True)
    spread = variance > 0
    return jnp.where(spread, jnp.sqrt(jnp.where(spread, variance, 1.0)), 0.0)


def rescale_guided(guided: jax.Array, conditional: jax.Array, guidance_rescale) -> jax.Array:
    """Blend ``guided`` with itself rescaled to the per-item standard deviation of the
    conditional prediction (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
    are Flawed", sec. 3.4, eq. 15-16); ``guidance_rescale = 0`` returns ``guided``."""
    if isinstance(guidance_rescale, (int, float)) and guidance_rescale == 0:
        return guided  # as diffusers, which rescales only when guidance_rescale > 0
    spread = _item_std(guided)
    ratio = _item_std(conditional) / jnp.where(spread > 0, spread, 1.0)
    return guidance_rescale * guided * ratio + (1.0 - guidance_rescale) * guided


def classifier_free_guidance(
    model: ConditionalModel,
    conditioning: Any,
    unconditioning: Any,
    guidance_scale,
    *,
    guidance_rescale=0.0,
    batch_timesteps: bool = True,
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``model_fn(x, t)`` with classifier-free guidance (Ho & Salimans 2022, eq. 6):
    ``u + s (c - u)`` for the conditional and unconditional outputs ``c, u`` and scale ``s``.

    Both predictions come from one call on the doubled batch ``[x, x]`` with the conditionings
    concatenated along their leading axis, as diffusers' pipelines do. ``guidance_scale`` and
    ``guidance_rescale`` may be traced (a sweep does not recompile); ``guidance_rescale > 0``
    applies :func:`rescale_guided` as diffusers does.
    """

    check_callable("model", model, "(x, t, conditioning) -> model output", None, None, None)
    check_guidance_scalar("guidance_scale", guidance_scale)
    check_guidance_scalar("guidance_rescale", guidance_rescale, (0.0, 1.0))
    if jax.tree.structure(conditioning) != jax.tree.structure(unconditioning):
        raise ValueError(
            "conditioning and unconditioning must have the same structure (they are "
            f"concatenated leaf by leaf), got {jax.tree.structure(conditioning)} and "
            f"{jax.tree.structure(unconditioning)}"
        )

    def model_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        both = jax.tree.map(
            lambda u, c: jnp.concatenate([u, c], axis=0), unconditioning, conditioning
        )
        t_both = jnp.broadcast_to(t, (2 * jnp.shape(x)[0],)) if batch_timesteps else t
        doubled = jnp.concatenate([x, x], axis=0)
        output = model(doubled, t_both, both)
        if jnp.shape(output) != jnp.shape(doubled):
            raise ValueError(
                f"model must return one output per item of the doubled batch (2 * batch), shaped "
                f"{jnp.shape(doubled)}; got {jnp.shape(output)}"
            )
        unconditional, conditional = jnp.split(output, 2, axis=0)
        guided = unconditional + guidance_scale * (conditional - unconditional)
        return rescale_guided(guided, conditional, guidance_rescale)

    return model_fn
