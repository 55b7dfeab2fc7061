"""Our model against outputs of the original implementation (tests/golden, a copy of the project's shared/golden),
within its README's tolerances."""

import json

import numpy as np
import pytest
import torch
from helpers import GOLDEN, SHARED_GOLDEN, TINY
from safetensors.torch import load_file

import vdvae_zoo
from vdvae_zoo.nn.dmol import dmol_nll


def assert_uint8_close(ours: np.ndarray, reference: np.ndarray):
    """Samples are truncated to uint8: a difference of 1 on at most 0.5% of the values, nothing larger."""
    assert ours.shape == reference.shape and ours.dtype == np.uint8
    diff = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    assert diff.max() <= 1, f"max difference {diff.max()}"
    assert (diff > 0).mean() <= 0.005, f"{(diff > 0).mean():.4%} of values differ"


@pytest.mark.parametrize("filename", ["model-ema.th", "model.th", "model-cudatagged.th"])
def test_likelihood_matches_original(filename, golden_expected, golden_images):
    config = golden_expected["config"] | golden_expected["preprocess"]
    model = vdvae_zoo.load(TINY / filename, config=config, device="cpu")
    assert sum(p.numel() for p in model.parameters()) == golden_expected["n_params"]
    ref = golden_expected["likelihood"]
    torch.manual_seed(ref["seed_set_before"])
    r = model.likelihood(golden_images)
    np.testing.assert_allclose(r.distortion.numpy(), ref["distortion_nats_per_dim"], rtol=1e-4)
    np.testing.assert_allclose(r.rate.numpy(), ref["rate_nats_per_dim"], rtol=1e-4)
    np.testing.assert_allclose(r.neg_elbo.numpy(), ref["elbo_nats_per_dim"], rtol=1e-4)
    np.testing.assert_allclose(r.bpd.numpy(), ref["elbo_bits_per_dim"], rtol=1e-4)
    np.testing.assert_allclose(r.kl.numpy(), ref["kl_nats_per_layer"], rtol=1e-4)
    means = ref["original_forward_means"]
    np.testing.assert_allclose(
        [r.neg_elbo.mean(), r.distortion.mean(), r.rate.mean()],
        [means["elbo"], means["distortion"], means["rate"]],
        rtol=1e-4,
    )


def test_latents_match_original(golden_model, golden_expected, golden_images):
    torch.manual_seed(golden_expected["seed"])
    zs = golden_model.encode(golden_images)
    reference = load_file(str(TINY / "latents.safetensors"))
    assert len(zs) == len(reference) == golden_model.num_layers
    for i, z in enumerate(zs):
        torch.testing.assert_close(z, reference[f"z.{i}"], atol=1e-4, rtol=0)


def test_forward_matches_likelihood_and_has_gradients(golden_model, golden_expected, golden_images):
    """The training path (forward, with autograd) computes the same numbers as likelihood."""
    torch.manual_seed(0)
    out = golden_model(golden_images)
    np.testing.assert_allclose(
        out["neg_elbo"].detach().numpy(), golden_expected["likelihood"]["elbo_nats_per_dim"], rtol=1e-4
    )
    out["neg_elbo"].mean().backward()
    assert golden_model.decoder.dec_blocks[0].enc.c1.weight.grad.abs().sum() > 0
    assert golden_model.encoder.in_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("key", ["t1.0", "t0.8", "t_per_layer"])
def test_samples_match_original(key, golden_model, golden_expected):
    spec = golden_expected["samples"]
    temperature = spec["t_per_layer"] if key == "t_per_layer" else float(key[1:])
    torch.manual_seed(spec["seed_set_before"][key])
    ours = golden_model.sample(4, temperature=temperature).numpy()
    assert_uint8_close(ours, np.load(TINY / spec["file"])[key])


def test_decode_with_fixed_latents_matches_original(golden_model, golden_expected):
    spec = golden_expected["samples"]
    k = spec["set_latents_k"]
    latents = load_file(str(TINY / "latents.safetensors"))
    key = f"set_latents_k{k}_t0.1"
    torch.manual_seed(spec["seed_set_before"][key])
    ours = golden_model.decode([latents[f"z.{i}"] for i in range(k)], temperature=0.1).numpy()
    assert_uint8_close(ours, np.load(TINY / spec["file"])[key])


def test_reconstruct_equals_encode_then_decode(golden_model, golden_images):
    torch.manual_seed(5)
    zs = golden_model.encode(golden_images)
    expected = golden_model.decode(zs[:3], temperature=0.5)
    torch.manual_seed(5)
    assert torch.equal(golden_model.reconstruct(golden_images, keep=3, temperature=0.5), expected)


def test_generator_argument_reproduces_global_seed(golden_model, golden_images):
    torch.manual_seed(7)
    a = golden_model.sample(2, 0.9)
    b = golden_model.sample(2, 0.9, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    torch.manual_seed(7)
    la = golden_model.likelihood(golden_images).neg_elbo
    lb = golden_model.likelihood(golden_images, generator=torch.Generator().manual_seed(7)).neg_elbo
    assert torch.equal(la, lb)


@pytest.mark.parametrize("kind", ["8bit", "5bit"])
def test_dmol_matches_original(kind):
    expected = json.loads((GOLDEN / "dmol" / "expected.json").read_text())
    params = torch.from_numpy(np.load(GOLDEN / "dmol" / "params.npy"))
    target = torch.from_numpy(np.load(GOLDEN / "dmol" / f"target_{kind}.npy"))
    nll = dmol_nll(params, target, expected["num_mixtures"], low_bit=expected[kind]["low_bit"])
    np.testing.assert_allclose(nll.numpy(), expected[kind]["nll_nats_per_dim"], rtol=1e-5)


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_repository_copy_is_complete_and_equals_the_shared_master_when_present():
    """tests/golden is what every clone tests against; beside a developer's checkout, ../shared/golden is the
    master it was copied from, and the two must not drift apart."""
    ours = _files(GOLDEN)
    assert {
        "README.md",
        "tiny32/expected.json",
        "tiny32/model-ema.th",
        "tiny32/images.npy",
        "dmol/expected.json",
    } <= set(ours)
    if not SHARED_GOLDEN.is_dir():
        return  # a user's clone: the copy is all there is
    shared = _files(SHARED_GOLDEN)
    assert set(ours) == set(shared), f"files differ: {sorted(set(ours) ^ set(shared))}"
    changed = [name for name in ours if ours[name] != shared[name]]
    assert not changed, f"tests/golden differs from {SHARED_GOLDEN} in {changed}: copy it again"
