"""Schedulers inside Flax models: a linen module that samples with ``nn.scan``-lifted steps, and
its NNX counterpart. Both are jittable and differentiable with respect to the denoiser's
parameters (the whole loop is one scan; see :func:`jaxsched.sample` for the plain version)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
from flax import nnx

from jaxsched._checks import check_scheduler
from jaxsched.guidance import classifier_free_guidance, with_conditioning
from jaxsched.loops import sample, scan_plan, scan_step
from jaxsched.schedulers.base import Scheduler
from jaxsched.state import SchedulerState

Conditioning = Mapping[str, Any]


def conditioned_model_fn(
    denoiser: Callable[..., jax.Array],
    conditioning: Conditioning | None,
    unconditioning: Conditioning | None,
    guidance_scale,
    guidance_rescale,
    batch_timesteps: bool,
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``model_fn(x, t)`` calling ``denoiser(x, t, **conditioning)``.

    With ``guidance_scale`` (may be traced) it applies classifier-free guidance between
    ``conditioning`` and ``unconditioning`` (:func:`jaxsched.guidance.classifier_free_guidance`:
    one call on the doubled batch); with ``batch_timesteps`` the scalar ``t`` a scheduler passes
    becomes ``(batch,)``, the shape most denoisers take.
    """
    conditioning = {} if conditioning is None else dict(conditioning)
    if guidance_scale is None:
        if unconditioning is not None:
            raise ValueError("unconditioning is only used with guidance_scale (classifier-free)")
        return with_conditioning(
            lambda x, t, c: denoiser(x, t, **c), conditioning, batch_timesteps=batch_timesteps
        )
    if unconditioning is None:
        raise ValueError(
            "guidance_scale needs unconditioning: the keyword arguments of the unconditional "
            "call, shaped like conditioning (e.g. the empty prompt's embedding)"
        )
    return classifier_free_guidance(
        lambda x, t, c: denoiser(x, t, **c),
        conditioning,
        dict(unconditioning),
        guidance_scale,
        guidance_rescale=guidance_rescale,
        batch_timesteps=batch_timesteps,
    )


class LinenSampler(nn.Module):
    """Runs a whole sampling (or inversion) loop of ``scheduler`` around a linen ``denoiser``.

    ``denoiser(x, t, **conditioning)`` returns the model output for a sample ``x (batch, ...)``
    and the timestep ``t``: a scalar, or ``(batch,)`` with ``batch_timesteps=True``. The loop is
    ``nn.scan`` over the steps with every variable collection of the denoiser broadcast (its
    ``params``, ``batch_stats``... are shared by every step and read only), so ``init`` creates
    one set of parameters and ``jax.grad`` flows through every step to them. Runs exactly what
    :func:`jaxsched.sample` runs with :func:`conditioned_model_fn`.

    Example::

        sampler = LinenSampler(denoiser=MyDenoiser(), scheduler=sched, num_inference_steps=25)
        params = sampler.init(key, x_T, conditioning={"labels": y})["params"]
        x0 = jax.jit(sampler.apply)(
            {"params": params}, x_T, conditioning={"labels": y},
            unconditioning={"labels": null_labels}, guidance_scale=7.5,
        )
    """

    denoiser: nn.Module
    scheduler: Scheduler
    num_inference_steps: int
    batch_timesteps: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        state: SchedulerState | None = None,
        *,
        conditioning: Conditioning | None = None,
        unconditioning: Conditioning | None = None,
        guidance_scale=None,
        guidance_rescale=0.0,
        key: jax.Array | None = None,
        noise: jax.Array | None = None,
        **step_kwargs: Any,
    ) -> jax.Array:
        """The final sample. ``state`` defaults to ``scheduler.init(N, x.shape, x.dtype)``.
        ``conditioning`` (keyword arguments of every denoiser call), ``unconditioning`` and
        ``guidance_scale`` / ``guidance_rescale`` (classifier-free guidance, per call, may be
        traced) as :func:`conditioned_model_fn`; ``key``, ``noise`` and ``step_kwargs``
        (``eta``...) are :func:`jaxsched.sample`'s."""
        check_scheduler("scheduler", self.scheduler)
        if state is None:
            state = self.scheduler.init(self.num_inference_steps, x.shape, x.dtype)
        length, masked, per_step = scan_plan(self.scheduler, state, x, key, noise)

        def body(module: LinenSampler, carry, step_inputs):
            model_fn = conditioned_model_fn(
                module.denoiser,
                conditioning,
                unconditioning,
                guidance_scale,
                guidance_rescale,
                module.batch_timesteps,
            )
            new = scan_step(
                module.scheduler, model_fn, carry, step_inputs, masked=masked, **step_kwargs
            )
            return new, None

        scan = nn.scan(
            body,
            variable_broadcast=True,
            split_rngs={"params": False},
            length=length,
            unroll=self.scheduler.scan_unroll,
        )
        (_, x), _ = scan(self, (state, x), per_step)
        return x


class NNXSampler(nnx.Module):
    """The NNX counterpart of :class:`LinenSampler`: owns an ``nnx.Module`` denoiser and runs
    the loop as one ``lax.scan`` with the denoiser split into a static graph and its state
    (``nnx.split`` / ``nnx.merge``), so ``nnx.jit`` and ``nnx.grad`` work on the sampler."""

    def __init__(
        self,
        denoiser: nnx.Module,
        scheduler: Scheduler,
        num_inference_steps: int,
        *,
        batch_timesteps: bool = False,
    ):
        check_scheduler("scheduler", scheduler)
        self.denoiser = denoiser
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self.batch_timesteps = batch_timesteps

    def __call__(
        self,
        x: jax.Array,
        state: SchedulerState | None = None,
        *,
        conditioning: Conditioning | None = None,
        unconditioning: Conditioning | None = None,
        guidance_scale=None,
        guidance_rescale=0.0,
        **kwargs: Any,
    ):
        """The final sample; conditioning and guidance as :meth:`LinenSampler.__call__`;
        ``kwargs`` go to :func:`jaxsched.sample` (``key``, ``eta``, ``return_trajectory``...)."""
        if state is None:
            state = self.scheduler.init(self.num_inference_steps, x.shape, x.dtype)
        graph, weights = nnx.split(self.denoiser)

        def denoise(x: jax.Array, t: jax.Array, **c: Any) -> jax.Array:
            return nnx.merge(graph, weights)(x, t, **c)

        model_fn = conditioned_model_fn(
            denoise,
            conditioning,
            unconditioning,
            guidance_scale,
            guidance_rescale,
            self.batch_timesteps,
        )
        return sample(self.scheduler, state, model_fn, x, **kwargs)
