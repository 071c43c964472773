"""The demo: the shipped denoisers (noise prediction and flow matching) make digits, inversions
reconstruct held-out digits, and the command writes its pictures and metrics."""

from __future__ import annotations

import contextlib
import io
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import jaxsched
from jaxsched.cli import main
from jaxsched.demo.denoiser import (
    FLOW_WEIGHTS,
    WEIGHTS,
    DigitDenoiser,
    init_params,
    load_params,
    model_fn,
    save_params,
)
from jaxsched.demo.digits import load_digits
from jaxsched.demo.run import FLOW_INVERTED, FLOW_SAMPLERS, INVERTED, SAMPLERS, nearest_distance
from jaxsched.demo.train import denoising_loss, flow_matching_loss, train

ALL_SAMPLERS = SAMPLERS + FLOW_SAMPLERS
ALL_INVERTED = INVERTED + FLOW_INVERTED


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["demo", "--out", str(out)])
    return out, json.loads((out / "metrics.json").read_text()), printed.getvalue()


def test_demo_writes_pictures_metrics_and_a_table(demo_run):
    out, metrics, printed = demo_run
    lines = printed.splitlines()
    for row in metrics["sampling"] + metrics["inversion"]:
        cells = [row["scheduler"], row["model"], str(row["steps"]), f"{row['ms']:.2f}"]
        if "reconstruction_rms" in row:
            cells.append(f"{row['reconstruction_rms']:.3e}")
        assert any(
            line.startswith(cells[0] + " ") and all(c in line for c in cells) for line in lines
        )
    assert len(metrics["sampling"]) == 2 * len(ALL_SAMPLERS)
    assert len(metrics["inversion"]) == 2 * len(ALL_INVERTED)
    assert {row["model"] for row in metrics["sampling"]} == {"epsilon", "flow"}
    heun = [row for row in metrics["sampling"] if row["scheduler"] == "Flow Heun"]
    assert [row["model_calls"] for row in heun] == [19, 49]  # 2N - 1, as diffusers' timesteps
    with Image.open(out / "samples.png") as samples:
        assert samples.size[1] == 2 * len(ALL_SAMPLERS) * 34
    with Image.open(out / "inversion.png") as inversion:
        assert inversion.size[1] == 3 * 2 * len(ALL_INVERTED) * 34
    with Image.open(out / "trajectory.png") as trajectory:  # 4 trajectories, 5 img2img rows
        assert trajectory.size[1] == (4 + 5) * 34


def test_samples_look_like_digits(demo_run):
    """Every sampler's digits lie as close to the training digits as held-out real digits do
    (measured 0.25-0.26 with the noise-prediction model, 0.21-0.23 with the flow model, vs
    0.29); clipped Gaussian noise lies at about 0.94."""
    _, metrics, _ = demo_run
    reference = metrics["held_out_nearest_train_distance"]
    train_set, _ = load_digits()
    noise = np.clip(np.random.default_rng(0).normal(size=(16, 8, 8)), -1, 1)
    assert nearest_distance(noise, train_set.images) > 2.5 * reference
    for row in metrics["sampling"]:
        assert row["nearest_train_distance"] < 1.1 * reference, row


@pytest.mark.parametrize(
    ("weights", "sched"),
    [(WEIGHTS, SAMPLERS[1][1]), (FLOW_WEIGHTS, FLOW_SAMPLERS[0][1])],
    ids=["epsilon", "flow"],
)
def test_samples_are_diverse(weights, sched):
    """64 samples' nearest training digits cover most of the ten classes (measured 9 and 10):
    neither model has collapsed onto a few memorised digits."""
    train_set, _ = load_digits()
    noise = jax.random.normal(jax.random.key(3), (64, 8, 8))
    samples = jaxsched.sample(
        sched, sched.init(25, noise.shape), model_fn(load_params(weights)), noise
    )
    flat, train = (
        samples.reshape(64, -1),
        jnp.asarray(train_set.images).reshape(len(train_set.images), -1),
    )
    nearest = jnp.argmin(jnp.sum((flat[:, None] - train[None]) ** 2, -1), axis=1)
    assert len(set(train_set.labels[np.asarray(nearest)].tolist())) >= 8


def test_inversions_reconstruct_held_out_digits(demo_run):
    """invert -> regenerate error on [-1, 1] pixels (measured 1.4e-1 / 9.8e-2 for DDIM at
    10 / 25 steps, 9.7e-2 / 5.5e-2 DPM-Solver++, 1.1e-1 / 3.7e-2 DEIS, 1.9e-1 / 5.2e-2 flow
    Euler): far below the digits' own spread and falling with steps. ``exact_invert`` (8
    iterations) is 3-12x lower (DDIM 4.9e-2 / 8.2e-3, flow Euler 3.3e-2 / 4.2e-3); its latents
    are the model's own ODE inverse of off-training digits, farther out (std 1.8-2.4) than the
    plain inversions' (0.7-1.3)."""
    _, metrics, _ = demo_run
    by_name = {}
    for row in metrics["inversion"]:
        by_name.setdefault(row["scheduler"], []).append(row["reconstruction_rms"])
        assert 0.5 < row["latent_std"] < 3.0, row  # noise-like, not blown up
    for name, (at_10, at_25) in by_name.items():
        assert at_25 < at_10 < 0.2, (name, at_10, at_25)
    for plain, exact in (
        ("DDIMInverse", "DDIM exact_invert"),
        (
            "FlowMatchEulerInverse",
            "Flow Euler exact_invert",
        ),
    ):
        for plain_rms, exact_rms in zip(by_name[plain], by_name[exact], strict=True):
            assert exact_rms < plain_rms / 2, (plain, by_name[plain], by_name[exact])


def test_training_lowers_the_loss_and_weights_round_trip(tmp_path):
    train_set, _ = load_digits()
    losses = []
    params = train(
        train_set.images,
        steps=250,
        ema_decay=0.9,
        on_step=lambda step, loss: losses.append((step, loss)),
        seed=1,
    )
    assert [step for step, _ in losses] == [100, 200, 250]  # the bar reaches the end
    # An untrained model predicts zero noise (its last layer starts at zero): loss 1. The
    # returned (EMA) weights are trained too.
    schedule = jaxsched.noise_schedule("linear")
    x0 = jnp.asarray(train_set.images[:256])
    returned = denoising_loss(params, DigitDenoiser(), schedule, x0, jax.random.key(0))
    assert losses[-1][1] < 0.25 and float(returned) < 0.25, (losses, returned)
    path = save_params(params, tmp_path / "w.msgpack")
    chex.assert_trees_all_equal(load_params(path), params)
    x = jnp.zeros((2, 8, 8))
    chex.assert_trees_all_close(
        model_fn(params)(x, jnp.int32(5)), model_fn(load_params(path))(x, 5)
    )


def test_flow_training_lowers_the_flow_matching_loss():
    """An untrained model predicts zero velocity: loss E||eps - x0||^2 (measured 1.76); 250
    steps bring it to about 0.72."""
    train_set, _ = load_digits()
    x0 = jnp.asarray(train_set.images[:256])
    untrained = flow_matching_loss(
        init_params(jax.random.key(0)), DigitDenoiser(), x0, jax.random.key(0)
    )
    params = train(train_set.images, steps=250, ema_decay=0.9, seed=1, objective="flow")
    trained = flow_matching_loss(params, DigitDenoiser(), x0, jax.random.key(0))
    assert float(untrained) > 1.5 and float(trained) < 0.85, (untrained, trained)
    with pytest.raises(ValueError, match="objective must be one of"):
        train(train_set.images, steps=1, objective="velocity")


@pytest.mark.parametrize("weights", [WEIGHTS, FLOW_WEIGHTS], ids=["epsilon", "flow"])
def test_shipped_weights_fit_the_architecture(weights):
    shipped = load_params(weights)
    fresh = init_params(jax.random.key(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(shipped, fresh)
    size = sum(leaf.size for leaf in jax.tree.leaves(shipped))
    assert size < 1_000_000, size


def test_train_command_saves_loadable_weights(tmp_path, capsys):
    from argparse import Namespace

    from jaxsched.cli import _train

    paths = _train(Namespace(train_steps=100, seed=0, out=str(tmp_path)))
    assert paths == (tmp_path / "digits_denoiser.msgpack", tmp_path / "digits_flow.msgpack")
    for path in paths:
        chex.assert_trees_all_equal_shapes_and_dtypes(load_params(path), load_params())
    captured = capsys.readouterr()
    for objective in ("epsilon", "flow"):  # a progress bar each
        assert f"training ({objective})" in captured.err and "loss=" in captured.err
        assert f"saved the new {objective} weights" in captured.out
