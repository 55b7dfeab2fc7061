"""Inference fast paths (bf16 autocast, channels_last, torch.compile fallback, automatic micro-batching) keep
results within tolerance of the plain float32 path."""

import numpy as np
import pytest
import torch
from helpers import TINY, seeded, tiny_config_dict

import vdvae_zoo
from vdvae_zoo import VDVAE, VDVAEConfig
from vdvae_zoo.compute import batching
from vdvae_zoo.nn.runtime import compute_dtype


def test_channels_last_matches_the_default_layout(golden_model, golden_images):
    plain_lik = seeded(lambda: golden_model.likelihood(golden_images))
    plain_samples = seeded(lambda: golden_model.sample(8, 0.8))
    golden_model.optimize(channels_last=True)
    assert golden_model.runtime.memory_format == torch.channels_last
    fast_lik = seeded(lambda: golden_model.likelihood(golden_images))
    fast_samples = seeded(lambda: golden_model.sample(8, 0.8))
    torch.testing.assert_close(fast_lik.neg_elbo, plain_lik.neg_elbo, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_lik.kl, plain_lik.kl, rtol=1e-4, atol=1e-4)
    # Same random draws; a pixel may move by one level where a value sits on a rounding edge.
    assert (fast_samples.int() - plain_samples.int()).abs().max() <= 1
    assert (fast_samples != plain_samples).float().mean() < 1e-3


def test_bf16_autocast_stays_close_and_keeps_float32_outputs(golden_model, golden_images):
    plain = seeded(lambda: golden_model.likelihood(golden_images))
    fast = seeded(lambda: golden_model.likelihood(golden_images, dtype="bfloat16"))
    assert fast.neg_elbo.dtype == torch.float32
    assert (fast.bpd - plain.bpd).abs().max() < 0.01  # bits per dim
    golden_model.optimize(dtype="bf16")
    assert golden_model.compute_dtype == torch.bfloat16 and golden_model.dtype == torch.float32
    again = seeded(lambda: golden_model.likelihood(golden_images))
    torch.testing.assert_close(again.neg_elbo, fast.neg_elbo)
    # The latent draws are float32 even under autocast, so the random stream is the float32 one.
    plain_z = seeded(lambda: golden_model.encode(golden_images, dtype="float32"))
    fast_z = seeded(lambda: golden_model.encode(golden_images))
    assert all(z.dtype == torch.float32 for z in fast_z)
    assert max((a - b).abs().max().item() for a, b in zip(plain_z, fast_z, strict=False)) < 0.1
    images = seeded(lambda: golden_model.sample(4, 0.5))
    assert images.dtype == torch.uint8 and images.shape == (4, 32, 32, 3)


def test_training_forward_under_autocast_has_float32_losses(tiny_model):
    images = torch.zeros(2, 16, 16, 3, dtype=torch.uint8)
    tiny_model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny_model(images)
    assert all(v.dtype == torch.float32 for v in out.values())
    out["neg_elbo"].mean().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in tiny_model.parameters())


def test_dtype_names_are_checked(tiny_model):
    assert compute_dtype("bf16") == torch.bfloat16 and compute_dtype(torch.float32) == torch.float32
    with pytest.raises(ValueError, match="dtype must be one of"):
        tiny_model.sample(1, dtype="int8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        vdvae_zoo.load(TINY / "model-ema.th", config="cifar10", dtype="half-ish")


def test_load_passes_fast_path_options(golden_expected):
    model = vdvae_zoo.load(
        TINY / "model-ema.th",
        config=golden_expected["config"] | golden_expected["preprocess"],
        device="cpu",
        dtype="bfloat16",
        channels_last=True,
    )
    assert model.compute_dtype == torch.bfloat16 and model.runtime.memory_format == torch.channels_last
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_compile_falls_back_to_eager_with_one_warning(tiny_model, monkeypatch):
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    expected = seeded(lambda: tiny_model.likelihood(images))

    def broken_compile(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("no C++ compiler found\nmore detail")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    tiny_model.optimize(compile=True)
    with pytest.warns(RuntimeWarning, match="torch.compile failed, running eagerly") as record:
        got = seeded(lambda: tiny_model.likelihood(images))
    assert len([w for w in record if "torch.compile" in str(w.message)]) == 1
    torch.testing.assert_close(got.neg_elbo, expected.neg_elbo)
    assert not tiny_model.compiled
    tiny_model.optimize(compile=False)  # back to the class's forward
    assert all("forward" not in vars(m) for m in tiny_model.modules())
    torch.testing.assert_close(seeded(lambda: tiny_model.likelihood(images)).neg_elbo, expected.neg_elbo)


def test_automatic_micro_batches_follow_the_memory_budget(tiny_model, monkeypatch):
    per_image = tiny_model.auto_batch_size()
    assert per_image > 100  # a 16x16 model fits many images in 2 GiB
    monkeypatch.setattr(batching, "CPU_BATCH_MEMORY", batching.CPU_BATCH_MEMORY * 3 // per_image)
    assert tiny_model.auto_batch_size() == 3
    seen = []
    handle = tiny_model.decoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (7, 16, 16, 3), dtype=np.uint8))
    auto = seeded(lambda: tiny_model.likelihood(images))
    auto_samples = seeded(lambda: tiny_model.sample(7))
    handle.remove()
    assert seen == [3, 3, 1, 3, 3, 1]
    torch.testing.assert_close(auto.neg_elbo, seeded(lambda: tiny_model.likelihood(images, batch_size=3)).neg_elbo)
    assert torch.equal(auto_samples, seeded(lambda: tiny_model.sample(7, batch_size=3)))


def test_full_size_batches_are_bounded():
    with torch.device("meta"):
        big = VDVAE(VDVAEConfig.from_preset("ffhq1024"))
    small = VDVAE(VDVAEConfig.from_dict(tiny_config_dict()))
    assert 1 <= big.auto_batch_size() < small.auto_batch_size()


def test_keep_freed_memory_sets_glibc_malloc_options():
    import subprocess
    import sys

    code = "import sys, vdvae_zoo; sys.exit(0 if vdvae_zoo.keep_freed_memory() else 3)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    expected = 0 if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()) else 3
    assert proc.returncode == expected, proc.stderr


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_residual_adds_change_nothing(dtype):
    """Under inference_mode and bf16 autocast the residual adds write into the stream; under no_grad (or in
    float32) they do not. Both must give the same numbers, and the encoder's kept activations must survive:
    here the first encoder block down-samples the in_conv output, which stays in the activations the decoder
    reads."""
    torch.manual_seed(5)
    model = VDVAE(VDVAEConfig.from_dict(tiny_config_dict(enc_blocks="16d2,8x2,8d2,4x1,4d4,1x1"))).eval()
    with torch.no_grad():  # non-zero prior and residual outputs, so every add does something
        for _name, p in model.named_parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    images = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)

    def run():
        x, _ = model.preprocess(images)
        with autocast:
            activations = model.encoder(x)
            kept = {r: a.clone() for r, a in activations.items()}
            posterior, _ = seeded(lambda: model.decoder(3, activations))
            prior, _ = seeded(lambda: model.decoder(3, temperatures=[0.7] * model.num_layers))
        return kept, activations, posterior, prior

    with torch.no_grad():
        kept, activations, posterior, prior = run()
    with torch.inference_mode():
        kept_fast, activations_fast, posterior_fast, prior_fast = run()
    for r in kept:
        assert torch.equal(activations_fast[r], kept_fast[r]), f"the decoder changed encoder activation {r}"
        assert torch.equal(kept_fast[r], kept[r])
    assert torch.equal(posterior_fast, posterior) and torch.equal(prior_fast, prior)
    with torch.no_grad(), autocast:
        elbo = seeded(lambda: model(images)["neg_elbo"])
    torch.testing.assert_close(seeded(lambda: model.likelihood(images, dtype=dtype)).neg_elbo, elbo, rtol=0, atol=0)
