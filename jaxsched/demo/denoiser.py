"""The demo's denoisers: a residual MLP over the 64 pixels, conditioned on the timestep. About
0.5M parameters. Two trained sets of weights ship with jaxsched: one predicts the noise (epsilon,
integer timesteps of the linear VP schedule), the other the rectified-flow velocity ``eps - x0``
(timesteps ``1000 sigma``, as diffusers' flow-matching schedulers pass them)."""

from __future__ import annotations

import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import serialization

WEIGHTS = Path(__file__).with_name("digits_denoiser.msgpack")
FLOW_WEIGHTS = Path(__file__).with_name("digits_flow.msgpack")
IMAGE_SHAPE = (8, 8)
NUM_TRAIN_TIMESTEPS = 1000


def timestep_embedding(t: jax.Array, features: int) -> jax.Array:
    """Sinusoidal embedding ``(B, features)`` of timesteps ``(B,)`` (Vaswani et al. 2017,
    sec. 3.5), as DDPM conditions on the timestep."""
    half = features // 2
    freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class DigitDenoiser(nn.Module):
    """``eps_hat = model(x, t)`` (or the velocity, for flow weights) for ``x (B, 8, 8)`` and a
    timestep ``t`` (scalar or ``(B,)``, integer or float)."""

    width: int = 256
    depth: int = 3
    time_features: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        batch = x.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t), (batch,))
        emb = timestep_embedding(t, self.time_features)
        emb = nn.Dense(self.width)(nn.silu(nn.Dense(self.width)(emb)))
        h = nn.Dense(self.width)(x.reshape(batch, -1).astype(jnp.float32))
        for _ in range(self.depth):
            r = nn.Dense(self.width)(nn.LayerNorm()(h)) + emb
            h = h + nn.Dense(self.width)(nn.silu(r))
        out = nn.Dense(x[0].size, kernel_init=nn.initializers.zeros)(nn.silu(nn.LayerNorm()(h)))
        return out.reshape(x.shape).astype(x.dtype)


def init_params(key: jax.Array, model: DigitDenoiser | None = None):
    """Fresh parameters of ``model`` (default architecture)."""
    model = model or DigitDenoiser()
    return model.init(key, jnp.zeros((1, *IMAGE_SHAPE)), jnp.zeros((1,), jnp.int32))["params"]


def save_params(params, path: str | Path = WEIGHTS) -> Path:
    """Write ``params`` with flax's msgpack serialization."""
    path = Path(path)
    path.write_bytes(serialization.to_bytes(params))
    return path


def load_params(path: str | Path = WEIGHTS):
    """The parameters stored at ``path`` (default: the shipped noise-prediction weights;
    :data:`FLOW_WEIGHTS` holds the shipped flow model's).

    Raises:
        ValueError: naming ``path`` when it is missing, unreadable, not flax msgpack, or holds
            the parameters of another model (other layers or sizes).
    """
    template = init_params(jax.random.key(0))
    try:
        params = serialization.from_bytes(template, Path(path).read_bytes())
    except Exception as err:  # msgpack and flax raise many kinds; all mean "not these weights"
        raise ValueError(
            f"{path} does not hold this demo denoiser's weights ({type(err).__name__}: {err})"
        ) from err
    shapes = jax.tree.map(jnp.shape, params)
    expected = jax.tree.map(jnp.shape, template)
    if shapes != expected:
        raise ValueError(f"{path} holds the weights of a denoiser with other layer sizes")
    return params


def model_fn(params, model: DigitDenoiser | None = None):
    """``(x, t) -> eps_hat`` (or the velocity), the form ``jaxsched.sample`` calls."""
    model = model or DigitDenoiser()

    def predict(x: jax.Array, t: jax.Array) -> jax.Array:
        return model.apply({"params": params}, x, t)

    return predict
