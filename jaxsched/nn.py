"""Schedulers inside Flax models: a linen module that samples with ``nn.scan``-lifted steps, and
its NNX counterpart. Both are jittable and differentiable with respect to the denoiser's
parameters (the whole loop is one scan; see :func:`jaxsched.sample` for the plain version)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
from flax import nnx

from jaxsched._checks import check_scheduler
from jaxsched.loops import sample, scan_plan, scan_step
from jaxsched.schedulers.base import Scheduler
from jaxsched.state import SchedulerState


class LinenSampler(nn.Module):
    """Runs a whole sampling (or inversion) loop of ``scheduler`` around a linen ``denoiser``.

    ``denoiser(x, t)`` returns the model output for a sample ``x (batch, ...)`` and a scalar
    integer timestep ``t``. The loop is ``nn.scan`` over the steps with every variable
    collection of the denoiser broadcast (its ``params``, ``batch_stats``... are shared by
    every step and read only), so ``init`` creates one set of parameters and ``jax.grad``
    flows through every step to them. Runs exactly what :func:`jaxsched.sample` runs.

    Example::

        sampler = LinenSampler(denoiser=MyDenoiser(), scheduler=sched, num_inference_steps=25)
        params = sampler.init(key, x_T)["params"]
        x0 = jax.jit(sampler.apply)({"params": params}, x_T)
    """

    denoiser: nn.Module
    scheduler: Scheduler
    num_inference_steps: int

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        state: SchedulerState | None = None,
        *,
        key: jax.Array | None = None,
        noise: jax.Array | None = None,
        **step_kwargs: Any,
    ) -> jax.Array:
        """The final sample. ``state`` defaults to ``scheduler.init(N, x.shape, x.dtype)``;
        ``key``, ``noise`` and ``step_kwargs`` (``eta``...) are :func:`jaxsched.sample`'s."""
        check_scheduler("scheduler", self.scheduler)
        if state is None:
            state = self.scheduler.init(self.num_inference_steps, x.shape, x.dtype)
        length, masked, per_step = scan_plan(self.scheduler, state, x, key, noise)

        def body(module: LinenSampler, carry, step_inputs):
            new = scan_step(
                module.scheduler,
                module.denoiser,
                carry,
                step_inputs,
                masked=masked,
                **step_kwargs,
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

    def __init__(self, denoiser: nnx.Module, scheduler: Scheduler, num_inference_steps: int):
        check_scheduler("scheduler", scheduler)
        self.denoiser = denoiser
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps

    def __call__(self, x: jax.Array, state: SchedulerState | None = None, **kwargs: Any):
        """The final sample; ``kwargs`` go to :func:`jaxsched.sample` (``key``, ``eta``...)."""
        if state is None:
            state = self.scheduler.init(self.num_inference_steps, x.shape, x.dtype)
        graph, weights = nnx.split(self.denoiser)

        def denoise(x: jax.Array, t: jax.Array) -> jax.Array:
            return nnx.merge(graph, weights)(x, t)

        return sample(self.scheduler, state, denoise, x, **kwargs)
