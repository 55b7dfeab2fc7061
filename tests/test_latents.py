"""The latent API for downstream work (#22): per-layer posterior statistics, the layout of a flat latent vector, and
flatten / unflatten as exact inverses (the Brain-Diffuser recipe: imagenet64's first 31 layers, 91,168 numbers)."""

import json

import numpy as np
import pytest
import torch
from helpers import random_images

import vdvae_zoo
from vdvae_zoo import VDVAE, VDVAEConfig, flatten_latents, unflatten_latents


def test_imagenet64s_first_31_layers_are_91168_numbers_and_come_back_unchanged():
    config = VDVAEConfig.from_preset("imagenet64")
    with torch.device("meta"):
        model = VDVAE(config)
    layout = model.latent_layout
    first = layout[:31]
    assert sum(s.size for s in first) == 91168 and first[-1].offset + first[-1].size == 91168
    assert [s.resolution for s in first] == [1] * 2 + [4] * 4 + [8] * 8 + [16] * 16 + [32]  # 1-16, one 32x32 layer
    latents = [torch.randn(2, *s.shape) for s in first]
    flat = flatten_latents(latents)
    assert flat.shape == (2, 91168)
    back = unflatten_latents(flat, model)
    assert len(back) == 31 and all(torch.equal(a, b) for a, b in zip(back, latents, strict=False))
    with pytest.raises(ValueError, match="does not end on a layer boundary"):
        unflatten_latents(flat[:, :91000], config)


def test_encode_gives_posterior_means_stds_and_samples(tiny_model):
    images = random_images(3)
    seeds = [1, 2, 3]
    layers = tiny_model.encode(images, stats=True, seeds=seeds)
    samples = tiny_model.encode(images, seeds=seeds)
    assert len(layers) == tiny_model.num_layers
    for layer, z, slot in zip(layers, samples, tiny_model.latent_layout, strict=False):
        assert layer.z.shape == layer.mean.shape == layer.std.shape == (3, *slot.shape)
        assert torch.equal(layer.z, z) and (layer.std > 0).all()
    # with mean=True the sample is the mean, and no random number is drawn
    means = tiny_model.encode(images, stats=True, mean=True)
    assert all(torch.equal(m.z, m.mean) for m in means)
    # the samples are distributed as the posterior: mean + std * a standard normal
    eps = torch.cat([((layer.z - layer.mean) / layer.std).flatten() for layer in layers])
    assert abs(float(eps.mean())) < 0.1 and abs(float(eps.std()) - 1) < 0.1


def test_decoding_from_flat_rows_fixes_the_first_layers(tiny_model):
    """The path back: rows -> unflatten_latents -> decode, the remaining layers drawn from the prior."""
    images = random_images(2, seed=4)
    layers = tiny_model.encode(images, stats=True, mean=True)
    count = 4
    flat = flatten_latents(layers[:count])  # LayerLatents are accepted as they are
    latents = unflatten_latents(flat, tiny_model)
    assert len(latents) == count
    torch.manual_seed(0)
    from_rows = tiny_model.decode(latents, temperature=[0.5] * tiny_model.num_layers)
    torch.manual_seed(0)
    from_tensors = tiny_model.decode([layer.z for layer in layers[:count]], temperature=0.5)
    assert torch.equal(from_rows, from_tensors) and from_rows.shape == (2, 16, 16, 3)
    torch.manual_seed(0)
    other = tiny_model.decode(unflatten_latents(flat + 3.0, tiny_model), temperature=0.5)
    assert not torch.equal(other, from_rows)  # the rows decide the first layers


def test_flatten_refuses_what_is_not_latents():
    with pytest.raises(ValueError, match="no latents"):
        flatten_latents([])
    with pytest.raises(ValueError, match="different numbers of images"):
        flatten_latents([torch.zeros(2, 4, 1, 1), torch.zeros(3, 4, 4, 4)])
    with pytest.raises(ValueError, match=r"\(N, zdim, r, r\)"):
        flatten_latents([torch.zeros(2, 4)])


def test_encode_writes_every_layer_or_flat_rows_at_data_set_scale(tmp_path):
    from click.testing import CliRunner
    from PIL import Image
    from safetensors.torch import load_file

    from vdvae_zoo.cli import main

    runner = CliRunner()
    assert runner.invoke(main, ["new", "tiny32", "-o", str(tmp_path / "m")]).exit_code == 0
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(random_images(5, size=32, seed=2).numpy()):
        Image.fromarray(im).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"no")
    result = runner.invoke(
        main, ["encode", str(tmp_path / "m"), str(folder), "-o", str(tmp_path / "z.safetensors"), "--stats"]
    )
    assert result.exit_code == 0 and "5 images" in result.output and "1 files skipped" in result.output, result.output
    tensors = load_file(str(tmp_path / "z.safetensors"))
    model = vdvae_zoo.load(tmp_path / "m", device="cpu")
    assert {f"z.{i}" for i in range(model.num_layers)} | {f"std.{i}" for i in range(model.num_layers)} <= set(tensors)
    result = runner.invoke(
        main, ["encode", str(tmp_path / "m"), str(folder), "-o", str(tmp_path / "f.safetensors"), "--flat", "4"]
    )
    assert result.exit_code == 0, result.output
    flat = load_file(str(tmp_path / "f.safetensors"))["flat"]
    assert flat.shape == (5, model.latent_layout[3].offset + model.latent_layout[3].size)
    assert torch.equal(flat, vdvae_zoo.flatten_latents([tensors[f"z.{i}"] for i in range(4)]))
    # the seed rule: image i of the folder with image_seed(0, i), whatever the chunking
    from vdvae_zoo.compute.batching import image_seed

    images = np.stack([np.asarray(Image.open(folder / f"{i}.png")) for i in range(5)])
    direct = model.encode(images, seeds=[image_seed(0, i) for i in range(5)])
    assert torch.allclose(tensors["z.5"], direct[5], atol=1e-6)
    result = runner.invoke(
        main, ["encode", str(tmp_path / "m"), str(folder), "-o", str(tmp_path / "f.npy"), "--flat", "4"]
    )
    assert result.exit_code == 0, result.output
    rows = np.load(tmp_path / "f.npy")
    assert rows.shape == flat.shape and np.allclose(rows, flat.numpy(), atol=1e-6)
    side = json.loads((tmp_path / "f.npy.json").read_text())
    assert len(side["images"]) == 5 and side["skipped"][0][0].endswith("broken.png") and len(side["layout"]) == 4
