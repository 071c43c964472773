"""Flax integration (linen and NNX samplers, gradients) and the model-function helpers."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.guiders.guider_utils import rescale_noise_cfg
from flax import nnx

import jaxsched
from jaxsched.guidance import classifier_free_guidance, with_conditioning
from jaxsched.nn import LinenSampler, NNXSampler

SHAPE = (3, 4)
STEPS = 6


class TinyLinen(nn.Module):
    """``eps_hat = tanh(W x + b t / 1000)``: a few parameters, smooth in all of them."""

    @nn.compact
    def __call__(self, x, t):
        h = nn.Dense(SHAPE[1], param_dtype=x.dtype)(x)
        scale = self.param("time", nn.initializers.constant(0.3), (), x.dtype)
        return jnp.tanh(h + scale * t.astype(x.dtype) / 1000.0)


class TinyNNX(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dtype=jnp.float32):
        self.dense = nnx.Linear(SHAPE[1], SHAPE[1], rngs=rngs, param_dtype=dtype)
        self.time = nnx.Param(jnp.asarray(0.3, dtype))

    def __call__(self, x, t):
        return jnp.tanh(self.dense(x) + self.time[...] * t.astype(x.dtype) / 1000.0)


SCHEDULERS = [
    jaxsched.DDIMScheduler(clip_sample=False),
    jaxsched.DPMSolverMultistepScheduler(solver_order=3),
    jaxsched.DEISMultistepScheduler(),
    jaxsched.DPMSolverMultistepInverseScheduler(),
]


def _loss(x):
    return jnp.sum(x**2)


def _finite_difference(f, params, direction, eps=1e-6):
    plus = jax.tree.map(lambda p, d: p + eps * d, params, direction)
    minus = jax.tree.map(lambda p, d: p - eps * d, params, direction)
    return (f(plus) - f(minus)) / (2 * eps)


@pytest.mark.parametrize("sched", SCHEDULERS, ids=lambda s: type(s).__name__)
def test_linen_sampler_is_sample_and_its_gradient_is_exact(sched):
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), SHAPE, jnp.float64)
        sampler = LinenSampler(denoiser=TinyLinen(), scheduler=sched, num_inference_steps=STEPS)
        params = sampler.init(jax.random.key(1), x)["params"]
        assert set(params) == {"denoiser"}  # one set of parameters shared by every step
        out = jax.jit(sampler.apply)({"params": params}, x)
        denoiser = TinyLinen()

        def model(x, t):
            return denoiser.apply({"params": params["denoiser"]}, x, t)

        expected = jaxsched.sample(sched, sched.init(STEPS, SHAPE, jnp.float64), model, x)
        chex.assert_trees_all_close(out, expected, rtol=1e-12, atol=1e-12)

        def loss(p):
            return _loss(sampler.apply({"params": p}, x))

        grads = jax.jit(jax.grad(loss))(params)
        direction = jax.tree.map(
            lambda p: jax.random.normal(jax.random.key(2), p.shape, p.dtype), params
        )
        analytic = sum(
            jnp.vdot(g, d)
            for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction), strict=True)
        )
        numeric = _finite_difference(loss, params, direction)
        np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6)


@pytest.mark.parametrize("sched", SCHEDULERS[:3], ids=lambda s: type(s).__name__)
def test_nnx_sampler_is_sample_and_its_gradient_is_exact(sched):
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), SHAPE, jnp.float64)
        sampler = NNXSampler(TinyNNX(nnx.Rngs(1), jnp.float64), sched, STEPS)
        out = nnx.jit(lambda s, x: s(x))(sampler, x)
        graph, weights = nnx.split(sampler.denoiser)

        def model(x, t):
            return nnx.merge(graph, weights)(x, t)

        expected = jaxsched.sample(sched, sched.init(STEPS, SHAPE, jnp.float64), model, x)
        chex.assert_trees_all_close(out, expected, rtol=1e-12, atol=1e-12)

        grads = nnx.grad(lambda s: _loss(s(x)))(sampler)
        graph, params, rest = nnx.split(sampler, nnx.Param, ...)
        structure = jax.tree.structure(params)
        leaves = jax.tree.leaves(params)
        directions = [
            jax.random.normal(jax.random.key(i), p.shape, p.dtype) for i, p in enumerate(leaves)
        ]

        def loss_at(step):
            moved = [p + step * d for p, d in zip(leaves, directions, strict=True)]
            return _loss(nnx.merge(graph, jax.tree.unflatten(structure, moved), rest)(x))

        grad_leaves = jax.tree.leaves(nnx.split(grads, nnx.Param, ...)[1])
        analytic = sum(jnp.vdot(g, d) for g, d in zip(grad_leaves, directions, strict=True))
        numeric = (loss_at(1e-6) - loss_at(-1e-6)) / 2e-6
        np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6)


def _conditional_model(x, t, cond):
    return 0.5 * x + cond[:, None] * (1.0 + t[:, None] / 1000.0)


def test_classifier_free_guidance_matches_the_formula_and_diffusers_rescale():
    x = jax.random.normal(jax.random.key(3), (4, 6))
    cond, uncond = jnp.arange(1.0, 5.0), jnp.zeros(4)
    t = jnp.int32(500)
    c = _conditional_model(x, jnp.full(4, t), cond)
    u = _conditional_model(x, jnp.full(4, t), uncond)
    plain = classifier_free_guidance(_conditional_model, cond, uncond, 7.5)(x, t)
    chex.assert_trees_all_close(plain, u + 7.5 * (c - u), rtol=1e-6)
    unguided = classifier_free_guidance(_conditional_model, cond, uncond, 1.0)(x, t)
    chex.assert_trees_all_close(unguided, c, rtol=1e-6)
    rescaled = classifier_free_guidance(_conditional_model, cond, uncond, 7.5, guidance_rescale=0.7)
    expected = rescale_noise_cfg(
        torch.from_numpy(np.array(u + 7.5 * (c - u))), torch.from_numpy(np.array(c)), 0.7
    )
    chex.assert_trees_all_close(rescaled(x, t), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_guidance_scale_sweep_does_not_recompile():
    sched = jaxsched.DDIMScheduler(clip_sample=False)
    state = sched.init(5, (4, 6))
    traces = []

    @jax.jit
    def run(scale, x):
        traces.append(1)
        model = classifier_free_guidance(_conditional_model, jnp.ones(4), jnp.zeros(4), scale)
        return jaxsched.sample(sched, state, model, x)

    x = jax.random.normal(jax.random.key(4), (4, 6))
    results = [run(s, x) for s in (1.0, 3.0, 7.5)]
    assert len(traces) == 1
    assert not np.allclose(results[0], results[2])


def test_with_conditioning_broadcasts_the_timestep():
    model = with_conditioning(_conditional_model, jnp.arange(4.0))
    x = jnp.ones((4, 6))
    chex.assert_trees_all_close(
        model(x, jnp.int32(10)), _conditional_model(x, jnp.full(4, 10), jnp.arange(4.0))
    )


def _linen_setup(sched, denoiser=None):
    x = jax.random.normal(jax.random.key(0), SHAPE)
    sampler = LinenSampler(
        denoiser=denoiser or TinyLinen(), scheduler=sched, num_inference_steps=STEPS
    )
    variables = sampler.init(jax.random.key(1), x, key=jax.random.key(9))
    inner = denoiser or TinyLinen()

    def model(x, t):
        return inner.apply({k: v["denoiser"] for k, v in variables.items()}, x, t)

    return x, sampler, variables, model


@pytest.mark.parametrize("sched", SCHEDULERS, ids=lambda s: type(s).__name__)
def test_linen_sampler_continues_a_partly_stepped_state(sched):
    x, sampler, variables, model = _linen_setup(sched)
    state = sched.init(STEPS, SHAPE)
    t = state.timesteps[0]
    state, x = sched.step(state, model(x, t), t, x)
    expected = jaxsched.sample(sched, state, model, x)
    chex.assert_trees_all_close(sampler.apply(variables, x, state), expected, rtol=1e-5)
    traced = jax.jit(sampler.apply)(variables, x, state)  # traced step_index: masked steps
    chex.assert_trees_all_close(traced, expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("sched", "kwargs"),
    [
        (jaxsched.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"), {}),
        (jaxsched.DDIMScheduler(), {"eta": 0.7, "use_clipped_model_output": True}),
    ],
    ids=["sde-dpmsolver++", "ddim-eta"],
)
def test_linen_sampler_takes_keys_and_step_options(sched, kwargs):
    x, sampler, variables, model = _linen_setup(sched)
    key = jax.random.key(5)
    got = jax.jit(lambda v, x, k: sampler.apply(v, x, key=k, **kwargs))(variables, x, key)
    expected = jaxsched.sample(sched, sched.init(STEPS, SHAPE), model, x, key=key, **kwargs)
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)


class NormedLinen(nn.Module):
    """A denoiser with a second variable collection (batch statistics, read only)."""

    @nn.compact
    def __call__(self, x, t):
        h = nn.BatchNorm(use_running_average=True)(nn.Dense(SHAPE[1])(x))
        return jnp.tanh(h) + 1e-4 * t


def test_linen_sampler_broadcasts_every_variable_collection():
    sched = jaxsched.DEISMultistepScheduler()
    x, sampler, variables, model = _linen_setup(sched, NormedLinen())
    assert set(variables) == {"params", "batch_stats"}
    expected = jaxsched.sample(sched, sched.init(STEPS, SHAPE), model, x)
    chex.assert_trees_all_close(sampler.apply(variables, x), expected, rtol=1e-5)


@pytest.mark.parametrize("guidance_rescale", [0.0, 0.5])
def test_guidance_gradients_are_finite_for_constant_items(guidance_rescale):
    """A zero-initialised output layer predicts a constant per item: std 0 there."""
    x = jax.random.normal(jax.random.key(6), (4, 1))

    def loss(w):
        model = classifier_free_guidance(
            lambda x, t, c: 0.0 * x + w + c[:, None],
            jnp.ones(4),
            jnp.zeros(4),
            3.0,
            guidance_rescale=guidance_rescale,
        )
        return jnp.sum(model(x, jnp.int32(10)) ** 2)

    assert bool(jnp.isfinite(jax.grad(loss)(0.5)))


# -- conditioning and classifier-free guidance through the samplers ---------------------------


class CondLinen(nn.Module):
    """A denoiser that takes per-call conditioning and ``(batch,)`` timesteps."""

    @nn.compact
    def __call__(self, x, t, *, labels):
        assert t.shape == x.shape[:1], t.shape  # batch_timesteps broadcast it
        h = nn.Dense(SHAPE[1])(x) + nn.Dense(SHAPE[1])(labels)
        return jnp.tanh(h + t[:, None].astype(x.dtype) / 1000.0)


class CondNNX(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.x = nnx.Linear(SHAPE[1], SHAPE[1], rngs=rngs)
        self.label = nnx.Linear(SHAPE[1], SHAPE[1], rngs=rngs)

    def __call__(self, x, t, *, labels):
        assert t.shape == x.shape[:1], t.shape
        return jnp.tanh(self.x(x) + self.label(labels) + t[:, None].astype(x.dtype) / 1000.0)


LABELS = jnp.eye(SHAPE[1])[:3]
NULL = jnp.zeros_like(LABELS)


def test_linen_sampler_passes_conditioning_and_guides_with_a_traced_scale():
    sched = jaxsched.DPMSolverMultistepScheduler()
    x = jax.random.normal(jax.random.key(0), SHAPE)
    sampler = LinenSampler(
        denoiser=CondLinen(), scheduler=sched, num_inference_steps=STEPS, batch_timesteps=True
    )
    params = sampler.init(jax.random.key(1), x, conditioning={"labels": LABELS})["params"]
    denoiser = CondLinen()

    def model(x, t, c):
        return denoiser.apply({"params": params["denoiser"]}, x, t, **c)

    state = sched.init(STEPS, SHAPE)
    plain = sampler.apply({"params": params}, x, conditioning={"labels": LABELS})
    expected = jaxsched.sample(sched, state, with_conditioning(model, {"labels": LABELS}), x)
    chex.assert_trees_all_close(plain, expected, rtol=1e-6, atol=1e-6)

    guided = jax.jit(
        lambda scale: sampler.apply(
            {"params": params},
            x,
            conditioning={"labels": LABELS},
            unconditioning={"labels": NULL},
            guidance_scale=scale,
        )
    )
    for scale in (1.0, 7.5):
        reference = jaxsched.sample(
            sched,
            state,
            classifier_free_guidance(model, {"labels": LABELS}, {"labels": NULL}, scale),
            x,
        )
        chex.assert_trees_all_close(guided(scale), reference, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(guided(1.0), plain, rtol=1e-5, atol=1e-5)  # scale 1: no guidance
    assert guided._cache_size() == 1  # the scale is traced: one compilation


def test_nnx_sampler_passes_conditioning_and_guides():
    sched = jaxsched.DDIMScheduler(clip_sample=False)
    x = jax.random.normal(jax.random.key(2), SHAPE)
    denoiser = CondNNX(nnx.Rngs(0))
    sampler = NNXSampler(denoiser, sched, STEPS, batch_timesteps=True)
    state = sched.init(STEPS, SHAPE)

    def model(x, t, c):
        return denoiser(x, t, **c)

    guided = sampler(
        x, conditioning={"labels": LABELS}, unconditioning={"labels": NULL}, guidance_scale=3.0
    )
    reference = jaxsched.sample(
        sched, state, classifier_free_guidance(model, {"labels": LABELS}, {"labels": NULL}, 3.0), x
    )
    chex.assert_trees_all_close(guided, reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="guidance_scale needs unconditioning"):
        sampler(x, conditioning={"labels": LABELS}, guidance_scale=3.0)
    with pytest.raises(ValueError, match="unconditioning is only used with guidance_scale"):
        sampler(x, conditioning={"labels": LABELS}, unconditioning={"labels": NULL})
