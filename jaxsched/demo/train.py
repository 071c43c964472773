"""Training the demo denoisers with optax, AdamW with a cosine learning rate and an EMA of the
weights, on one of two objectives:

- ``"epsilon"``: the DDPM noise-prediction loss (Ho et al. 2020, eq. 14) on the linear schedule;
- ``"flow"``: the conditional flow-matching loss on the rectified-flow path (Lipman et al. 2023,
  eq. 23; Liu et al. 2023, eq. 1), the model of SD3, Flux and Wan."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsched
from jaxsched.demo.denoiser import NUM_TRAIN_TIMESTEPS, DigitDenoiser, init_params

EMA_DECAY = 0.999
OBJECTIVES = ("epsilon", "flow")


def denoising_loss(params, model: DigitDenoiser, schedule, x0, key) -> jax.Array:
    """``E ||eps - eps_hat(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t)||^2`` over uniform ``t``."""
    k_t, k_eps = jax.random.split(key)
    t = jax.random.randint(k_t, (x0.shape[0],), 0, NUM_TRAIN_TIMESTEPS)
    eps = jax.random.normal(k_eps, x0.shape)
    abar = schedule.alphas_cumprod[t][:, None, None]
    x_t = jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * eps
    return jnp.mean((model.apply({"params": params}, x_t, t) - eps) ** 2)


def flow_matching_loss(params, model: DigitDenoiser, x0, key) -> jax.Array:
    """``E ||(eps - x0) - v_hat((1 - s) x0 + s eps, 1000 s)||^2`` over uniform ``s`` in [0, 1].

    The velocity ``eps - x0`` is ``dx/ds`` along the straight path, the sign and timestep scale
    (``t = 1000 s``) of diffusers' ``FlowMatchEulerDiscreteScheduler``.
    """
    k_s, k_eps = jax.random.split(key)
    s = jax.random.uniform(k_s, (x0.shape[0],))
    eps = jax.random.normal(k_eps, x0.shape)
    x_s = (1.0 - s[:, None, None]) * x0 + s[:, None, None] * eps
    v_hat = model.apply({"params": params}, x_s, s * NUM_TRAIN_TIMESTEPS)
    return jnp.mean((v_hat - (eps - x0)) ** 2)


def train(
    images: np.ndarray,
    *,
    steps: int = 8000,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    seed: int = 0,
    ema_decay: float = EMA_DECAY,
    objective: str = "epsilon",
    on_step: Callable[[int, float], None] | None = None,
):
    """EMA parameters of a :class:`DigitDenoiser` trained on ``images (n, 8, 8)`` to predict
    the noise (``objective="epsilon"``) or the flow velocity (``"flow"``).

    ``on_step(step, loss)`` is called every 100 steps and after the last (a progress bar).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    model = DigitDenoiser()
    schedule = jaxsched.noise_schedule("linear", num_train_timesteps=NUM_TRAIN_TIMESTEPS)

    def loss_fn(params, x0, key):
        if objective == "flow":
            return flow_matching_loss(params, model, x0, key)
        return denoising_loss(params, model, schedule, x0, key)

    k_init, k_train = jax.random.split(jax.random.key(seed))
    params = init_params(k_init, model)
    lr = optax.warmup_cosine_decay_schedule(0.0, learning_rate, steps // 20, steps)
    optimizer = optax.adamw(lr, weight_decay=1e-4)
    data = jnp.asarray(images)

    @jax.jit
    def update(carry, key):
        params, ema, opt_state = carry
        k_batch, k_loss = jax.random.split(key)
        x0 = data[jax.random.randint(k_batch, (batch_size,), 0, data.shape[0])]
        loss, grads = jax.value_and_grad(loss_fn)(params, x0, k_loss)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = optax.incremental_update(params, ema, 1.0 - ema_decay)
        return (params, ema, opt_state), loss

    carry = (params, params, optimizer.init(params))
    keys = jax.random.split(k_train, steps)
    for step in range(steps):
        carry, loss = update(carry, keys[step])
        if on_step is not None and ((step + 1) % 100 == 0 or step + 1 == steps):
            on_step(step + 1, float(loss))
    return carry[1]
