"""Importance-weighted likelihood, posterior means, interpolation and the per-layer KL chart."""

import math

import numpy as np
import pytest
import torch
from helpers import tiny_config_dict
from PIL import Image

from vdvae_zoo import VDVAE, VDVAEConfig
from vdvae_zoo.data.plots import bar_layout, bits_per_layer, bits_per_resolution, kl_caption, kl_chart
from vdvae_zoo.nn.dmol import dmol_nll


def iw_bounds(model, images, k, seeds=range(3)):
    """Mean over images and seeds of the K-sample bound (K = 1: the ELBO with one draw)."""
    values = []
    for s in seeds:
        torch.manual_seed(s)
        r = model.likelihood(images, n_samples=k) if k > 1 else model.likelihood(images)
        values.append(r.bpd_iw if k > 1 else r.bpd)
    return torch.stack(values).mean().item()


@pytest.mark.slow  # several seconds (processes, training, long chains): the quick run skips it
def test_iw_bound_beats_the_elbo_and_tightens_with_k(golden_model, golden_images):
    # The golden model has non-trivial random weights: its posterior is far from its prior, so the bounds differ.
    elbo = iw_bounds(golden_model, golden_images, 1, seeds=range(8))
    k4 = iw_bounds(golden_model, golden_images, 4)
    k32 = iw_bounds(golden_model, golden_images, 32)
    assert k32 < k4 < elbo
    assert elbo - k32 > 0.1  # not a rounding effect: the bound moves by a visible amount


def test_iw_elbo_fields_average_the_k_draws(golden_model, golden_images):
    torch.manual_seed(0)
    r = golden_model.likelihood(golden_images, n_samples=6)
    torch.testing.assert_close(r.neg_elbo, r.distortion + r.rate)
    torch.testing.assert_close(r.rate, r.kl.sum(1) / golden_model.config.dims_per_image)
    assert r.bpd_iw.shape == r.bpd.shape == (golden_images.shape[0],)
    assert golden_model.likelihood(golden_images).bpd_iw is None


def exact_model():
    """A model whose decoder ignores z and whose posterior equals its prior (both N(0, 1)): log p(x) is exact."""
    torch.manual_seed(5)
    model = VDVAE(VDVAEConfig.from_dict(tiny_config_dict())).eval()
    with torch.no_grad():
        for p in model.parameters():  # random everywhere, so the output distribution is not trivial
            p.normal_(0, 0.2)
        for layer in model.decoder.dec_blocks:
            layer.z_proj.weight.zero_()
            for conv in (layer.enc.c4, layer.prior.c4):
                conv.weight.zero_()
                conv.bias.zero_()
    return model


def test_all_bounds_equal_the_exact_likelihood_when_z_carries_nothing():
    model = exact_model()
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    with torch.no_grad():
        x_in, target = model.preprocess(images)
        params, _ = model.decoder(3, model.encoder(x_in))
        exact_bpd = dmol_nll(params, target, model.config.num_mixtures) / math.log(2)
    for k, batch in ((1, None), (2, None), (7, 2), (16, None)):
        r = model.likelihood(images, n_samples=k, batch_size=batch)
        torch.testing.assert_close(r.bpd, exact_bpd, atol=1e-4, rtol=0)
        assert r.rate.abs().max() < 1e-6
        if k > 1:
            torch.testing.assert_close(r.bpd_iw, exact_bpd, atol=1e-4, rtol=0)


def test_iw_passes_never_exceed_batch_size(tiny_model):
    seen = []
    handle = tiny_model.decoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
        r = tiny_model.likelihood(images, n_samples=10, batch_size=4)
    finally:
        handle.remove()
    assert max(seen) <= 4 and sum(seen) == 3 * 10
    assert torch.isfinite(r.bpd_iw).all()


def test_n_samples_is_validated(tiny_model):
    images = torch.zeros(1, 16, 16, 3, dtype=torch.uint8)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_samples"):
            tiny_model.likelihood(images, n_samples=bad)


def test_posterior_means_are_deterministic_and_differ_from_draws(tiny_model):
    images = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    a = tiny_model.encode(images, mean=True)
    b = tiny_model.encode(images, mean=True)
    drawn = tiny_model.encode(images)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=False))
    assert any(not torch.allclose(x, y) for x, y in zip(a, drawn, strict=False))


def test_interpolation_path(tiny_model):
    rng = np.random.default_rng(3)
    a, b, c = (torch.from_numpy(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(3))
    L = tiny_model.num_layers

    def path(x, y, **kw):
        torch.manual_seed(0)
        return tiny_model.interpolate(x, y, 5, **kw)

    ab = path(a, b)
    assert ab.shape == (5, 16, 16, 3) and ab.dtype == torch.uint8
    assert torch.equal(ab[0], path(a, c)[0])  # the start depends on a only
    assert torch.equal(ab[-1], path(b, a)[0])  # and the end is b's start
    assert not torch.equal(ab[0], ab[-1])
    flat = path(a, b, keep=0)  # nothing interpolated: the same noise gives one image
    assert all(torch.equal(flat[0], flat[i]) for i in range(5))
    batch = tiny_model.interpolate(torch.stack([a, b]), torch.stack([b, c]), 3, keep=L // 2)
    assert batch.shape == (2, 3, 16, 16, 3)
    slerp = path(a, b, mode="slerp")
    assert torch.equal(slerp[0], ab[0]) and torch.equal(slerp[-1], ab[-1])
    with pytest.raises(ValueError, match="steps"):
        tiny_model.interpolate(a, b, 1)
    with pytest.raises(ValueError, match="mode"):
        tiny_model.interpolate(a, b, 3, mode="cubic")
    with pytest.raises(ValueError, match="same shape"):
        tiny_model.interpolate(torch.stack([a, b]), b[None], 3)


def test_bits_per_layer_and_resolution():
    kl = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]) * math.log(2)
    torch.testing.assert_close(bits_per_layer(kl), torch.tensor([2.0, 2.0, 2.0], dtype=torch.float64))
    assert bits_per_resolution(kl, [4, 4, 8]) == pytest.approx({4: 4.0, 8: 2.0})
    with pytest.raises(ValueError, match="resolutions"):
        bits_per_resolution(kl, [4, 8])
    assert kl_caption(kl, [4, 4, 8]) == "share of 6 bits per image: 4x4: 67%   8x8: 33%"


def test_kl_chart_bar_heights_follow_the_bits(tmp_path):
    bits = torch.tensor([0.5, 4.0, 1.0, 2.0, 0.0, 3.0])
    path = tmp_path / "kl.png"
    img = kl_chart(bits * math.log(2), [1, 4, 4, 8, 8, 8], path, width=600, height=300)
    assert Image.open(path).size == (600, 300)
    pixels = np.asarray(img)
    heights = []
    for left, right in bar_layout(6, 600, 60):
        column = pixels[40 : 300 - 70, (left + right) // 2]  # the plot area, without labels or the axis
        heights.append(int((np.abs(column.astype(int) - 255).sum(axis=1) > 0).sum()))
    bar = np.array(heights)
    assert np.argmax(bar) == 1 and bar[4] == 0
    ratios = bar / bar[1]
    np.testing.assert_allclose(ratios, (bits / bits.max()).numpy(), atol=0.02)
