"""The demo: the shipped denoiser makes digits, inversions reconstruct held-out digits, and the
command writes its pictures and metrics."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxsched.cli import main
from jaxsched.demo.denoiser import init_params, load_params, model_fn, save_params
from jaxsched.demo.digits import load_digits
from jaxsched.demo.run import INVERTED, SAMPLERS, nearest_distance
from jaxsched.demo.train import train


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    main(["demo", "--out", str(out)])
    return out, json.loads((out / "metrics.json").read_text())


def test_demo_writes_pictures_and_metrics(demo_run, capsys):
    out, metrics = demo_run
    assert len(metrics["sampling"]) == 2 * len(SAMPLERS)
    assert len(metrics["inversion"]) == 2 * len(INVERTED)
    with Image.open(out / "samples.png") as samples:
        assert samples.size[1] == 2 * len(SAMPLERS) * 34
    with Image.open(out / "inversion.png") as inversion:
        assert inversion.size[1] == 3 * 2 * len(INVERTED) * 34


def test_samples_look_like_digits(demo_run):
    """Every sampler's digits lie as close to the training digits as held-out real digits do
    (measured 0.25-0.26 vs 0.29); Gaussian noise in the same range lies at about 1.3."""
    _, metrics = demo_run
    reference = metrics["held_out_nearest_train_distance"]
    train_set, _ = load_digits()
    noise = np.clip(np.random.default_rng(0).normal(size=(16, 8, 8)), -1, 1)
    assert nearest_distance(noise, train_set.images) > 2.5 * reference
    for row in metrics["sampling"]:
        assert row["nearest_train_distance"] < 1.1 * reference, row


def test_inversions_reconstruct_held_out_digits(demo_run):
    """invert -> regenerate error on [-1, 1] pixels (measured 1.4e-1 / 9.8e-2 for DDIM at
    10 / 25 steps, 9.7e-2 / 5.5e-2 DPM-Solver++, 1.1e-1 / 3.7e-2 DEIS): far below the digits'
    own spread and falling with steps."""
    _, metrics = demo_run
    by_name = {}
    for row in metrics["inversion"]:
        by_name.setdefault(row["scheduler"], []).append(row["reconstruction_rms"])
        assert 0.5 < row["latent_std"] < 1.5, row  # the latents look like unit noise
    for name, (at_10, at_25) in by_name.items():
        assert at_25 < at_10 < 0.2, (name, at_10, at_25)


def test_training_lowers_the_loss_and_weights_round_trip(tmp_path):
    train_set, _ = load_digits()
    losses = []
    params = train(
        train_set.images, steps=300, on_step=lambda step, loss: losses.append(loss), seed=1
    )
    # An untrained model predicts zero noise (its last layer starts at zero): loss 1.
    assert len(losses) == 3 and losses[-1] < 0.25, losses
    path = save_params(params, tmp_path / "w.msgpack")
    chex.assert_trees_all_equal(load_params(path), params)
    x = jnp.zeros((2, 8, 8))
    chex.assert_trees_all_close(
        model_fn(params)(x, jnp.int32(5)), model_fn(load_params(path))(x, 5)
    )


def test_shipped_weights_fit_the_architecture():
    shipped = load_params()
    fresh = init_params(jax.random.key(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(shipped, fresh)
    size = sum(leaf.size for leaf in jax.tree.leaves(shipped))
    assert size < 1_000_000, size


def test_train_command_saves_loadable_weights(tmp_path, capsys):
    from argparse import Namespace

    from jaxsched.cli import _train

    path = _train(Namespace(train_steps=100, seed=0, out=str(tmp_path)))
    assert path == tmp_path / "digits_denoiser.msgpack"
    chex.assert_trees_all_equal_shapes_and_dtypes(load_params(path), load_params())
    captured = capsys.readouterr()
    assert "training" in captured.err and "loss=" in captured.err  # the progress bar
    assert "saved the new weights" in captured.out
