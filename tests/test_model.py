"""Behaviour of the public model API on small random models."""

import math

import numpy as np
import pytest
import torch
from helpers import random_images, tiny_config_dict

from vdvae_zoo import VDVAE, VDVAEConfig
from vdvae_zoo.compute import batching


def test_sample_shape_dtype_and_device(tiny_model):
    x = tiny_model.sample(3, temperature=0.8)
    assert x.shape == (3, 16, 16, 3) and x.dtype == torch.uint8 and x.device.type == "cpu"


def test_likelihood_fields_are_consistent(tiny_model):
    images = random_images(4)
    r = tiny_model.likelihood(images)
    assert r.neg_elbo.shape == (4,) and r.kl.shape == (4, tiny_model.num_layers)
    torch.testing.assert_close(r.neg_elbo, r.distortion + r.rate)
    torch.testing.assert_close(r.rate, r.kl.sum(1) / (16 * 16 * 3))
    torch.testing.assert_close(r.bpd, r.neg_elbo / math.log(2))
    assert (r.kl >= -1e-5).all() and torch.isfinite(r.neg_elbo).all()


def test_numpy_and_tensor_inputs_agree(tiny_model):
    images = random_images(2)
    torch.manual_seed(1)
    a = tiny_model.likelihood(images).neg_elbo
    torch.manual_seed(1)
    b = tiny_model.likelihood(images.numpy()).neg_elbo
    assert torch.equal(a, b)


def test_micro_batches_give_what_one_batch_gives(tiny_model):
    """Splitting a batch (batch_size=, or the automatic split) changes no random number: the whole batch's
    draws are made first, in the original's order."""
    images = random_images(5)
    torch.manual_seed(3)
    whole = tiny_model.likelihood(images)
    torch.manual_seed(3)
    chunked = tiny_model.likelihood(images, batch_size=2)
    torch.testing.assert_close(chunked.neg_elbo, whole.neg_elbo)
    torch.testing.assert_close(chunked.kl, whole.kl)
    torch.manual_seed(4)
    s_whole = tiny_model.sample(5, temperature=0.7)
    torch.manual_seed(4)
    assert torch.equal(tiny_model.sample(5, temperature=0.7, batch_size=3), s_whole)
    torch.manual_seed(5)
    z_whole = tiny_model.encode(images)
    torch.manual_seed(5)
    z_chunked = tiny_model.encode(images, batch_size=2)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(z_whole, z_chunked, strict=False))
    torch.manual_seed(6)
    d_whole = tiny_model.decode(z_whole[:3], 0.5)
    torch.manual_seed(6)
    assert torch.equal(tiny_model.decode(z_whole[:3], 0.5, batch_size=2), d_whole)


def test_huge_batches_fall_back_to_per_chunk_draws(tiny_model, monkeypatch):
    # When the whole batch's draws would not fit the budget, each micro-batch draws its own (as separate calls).
    monkeypatch.setattr(batching, "CPU_BATCH_MEMORY", 4 * 16 * 16 * 3 * 3)  # < the draws of 3 images
    parts = list(
        batching.micro_batches(
            3,
            2,
            config=tiny_model.config,
            device=tiny_model.device,
            generator=None,
            sampling_layers=[True] * tiny_model.num_layers,
            pixels=True,
        )
    )
    assert [p.size for p in parts] == [2, 1] and all(p.normals is None and p.pixel_uniforms is None for p in parts)
    torch.manual_seed(4)
    chunked = tiny_model.sample(3, batch_size=2)
    torch.manual_seed(4)
    assert torch.equal(chunked, torch.cat([tiny_model.sample(2, batch_size=2), tiny_model.sample(1, batch_size=2)]))


def test_temperature_zero_uses_the_prior_mean(tiny_model):
    temps = [0.0] * tiny_model.num_layers
    with torch.no_grad():
        torch.manual_seed(0)
        a, outs_a = tiny_model.decoder(2, temperatures=temps)
        torch.manual_seed(1)
        b, outs_b = tiny_model.decoder(2, temperatures=temps)
    torch.testing.assert_close(a, b)
    for o in outs_a:
        assert torch.equal(o.z, o.p_mean)


def test_temperature_scales_the_prior_spread(tiny_model):
    layer = tiny_model.decoder.dec_blocks[0]
    x = torch.zeros(4000, layer.width, 1, 1)
    with torch.no_grad():
        torch.manual_seed(0)
        _, out = layer(x, temperature=0.5)
    spread = (out.z - out.p_mean) / out.p_logstd.exp()
    assert abs(spread.std().item() - 0.5) < 0.02


def test_per_layer_and_per_resolution_temperatures(tiny_model):
    L = tiny_model.num_layers
    assert tiny_model.layer_temperatures(0.7) == [0.7] * L
    assert tiny_model.layer_temperatures([0.1 * i for i in range(L)])[3] == pytest.approx(0.3)
    schedule = tiny_model.layer_temperatures({4: 0.9, 16: 0.6})
    expected = {1: 1.0, 4: 0.9, 8: 0.9, 16: 0.6}
    assert schedule == [expected[r] for r in tiny_model.layer_resolutions]


@pytest.mark.parametrize(
    "temperature,fragment",
    [
        (-0.1, ">= 0"),
        ([1.0, 1.0], "7 decoder layers"),
        ("hot", "a number"),
        (float("nan"), "finite"),
    ],
)
def test_bad_temperatures_are_refused(tiny_model, temperature, fragment):
    with pytest.raises(ValueError, match=fragment):
        tiny_model.sample(1, temperature=temperature)


@pytest.mark.parametrize(
    "images,fragment",
    [
        (np.zeros((2, 32, 32, 3), np.uint8), "16x16"),
        (np.zeros((2, 16, 16, 4), np.uint8), "3 channels"),
        (np.full((2, 16, 16, 3), 2.0, np.float32), r"in \[0, 1\]"),  # floats are taken in [0, 1] (#36)
        (torch.full((2, 16, 16, 3), float("nan")), r"in \[0, 1\]"),
        (np.zeros((16, 16, 3), np.uint8), r"\(N, 16, 16, 3\)"),
        ([1, 2, 3], "uint8"),
        ("images.png", r"uint8 pixels of shape \(N, 16, 16, 3\)"),
    ],
)
def test_bad_images_are_refused_with_the_expected_shape(tiny_model, images, fragment):
    with pytest.raises(ValueError, match=fragment):
        tiny_model.likelihood(images)


def test_decode_checks_latent_shapes_and_fills_the_rest(tiny_model):
    images = random_images(2)
    zs = tiny_model.encode(images)
    assert [tuple(z.shape) for z in zs] == [(2, 4, r, r) for r in tiny_model.layer_resolutions]
    assert tiny_model.decode(zs[:2], temperature=0.3).shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match=r"latent 1 has shape"):
        tiny_model.decode([zs[0], zs[0]])
    with pytest.raises(ValueError, match="n="):
        tiny_model.decode([])
    assert tiny_model.decode([], n=3).shape[0] == 3
    with pytest.raises(ValueError, match="keep must be"):
        tiny_model.reconstruct(images, keep=99)


def test_full_reconstruction_is_closer_than_prior_samples(tiny_model):
    # Decoding every posterior latent pins the output far more than sampling does: the per-layer
    # latents are exactly reused, so decoding them twice differs only by the pixel noise.
    images = random_images(2)
    zs = tiny_model.encode(images)
    with torch.no_grad():
        a, _ = tiny_model.decoder(2, latents=zs)
        b, _ = tiny_model.decoder(2, latents=zs)
    torch.testing.assert_close(a, b)


def test_inference_methods_restore_mode_and_disable_autograd(tiny_model):
    tiny_model.train()
    r = tiny_model.likelihood(random_images(1))
    assert tiny_model.training and not r.neg_elbo.requires_grad
    tiny_model.eval()
    tiny_model.sample(1)
    assert not tiny_model.training


def test_initialisation_follows_the_paper():
    cfg = VDVAEConfig.from_dict(tiny_config_dict())
    torch.manual_seed(0)
    model = VDVAE(cfg)
    state = model.state_dict()
    assert all(
        state[k].abs().sum() == 0
        for k in state
        if k.endswith(".bias") and "out_net" not in k and k not in ("decoder.bias",)
    )
    assert all(layer.prior.c4.weight.abs().sum() == 0 for layer in model.decoder.dec_blocks)
    assert torch.equal(model.decoder.gain, torch.ones_like(model.decoder.gain))
    # residual scaling: c4 of the encoder is scaled by sqrt(1/N) relative to a default conv of the same shape
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(4, 16, 1)
    n_enc = len(model.encoder.enc_blocks)
    ratio = model.encoder.enc_blocks[0].c4.weight.std() / plain.weight.std()
    assert abs(ratio.item() - math.sqrt(1 / n_enc)) < 0.25 * math.sqrt(1 / n_enc)


def test_custom_widths_and_low_bit_end_to_end():
    cfg = VDVAEConfig.from_dict(
        tiny_config_dict(width=8, custom_width_str="8:16,4:16,1:24", low_bit=True, no_bias_above=4)
    )
    torch.manual_seed(0)
    model = VDVAE(cfg)
    images = random_images(3)
    r = model.likelihood(images)
    assert torch.isfinite(r.neg_elbo).all()
    assert model.sample(2).shape == (2, 16, 16, 3)
    _, target = model.preprocess(images)
    levels = torch.unique(torch.round((target + 1) * 127.5))
    assert (levels % 8 == 0).all()


def test_five_bit_targets_ignore_the_low_bits():
    cfg = VDVAEConfig.from_dict(tiny_config_dict(low_bit=True))
    model = VDVAE(cfg)
    images = random_images(2)
    _, t1 = model.preprocess(images)
    _, t2 = model.preprocess(images | 7)
    assert torch.equal(t1, t2) and t1.max() <= 0.946 and t1.min() == -1


def test_reconstruct_with_several_keeps_encodes_once(tiny_model):
    images = random_images(2, seed=7)
    torch.manual_seed(0)
    rows = tiny_model.reconstruct(images, keep=[0, 2, None], temperature=0.5)
    assert rows.shape == (2, 3, 16, 16, 3) and rows.dtype == torch.uint8
    torch.manual_seed(0)
    zs = tiny_model.encode(images)
    for i, k in enumerate([0, 2, tiny_model.num_layers]):
        assert torch.equal(rows[:, i], tiny_model.decode(zs[:k], 0.5, n=2))
    assert tiny_model.reconstruct(images, keep=1).shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="keep"):
        tiny_model.reconstruct(images, keep=[1, 99])
