"""Any channel count (1 to 4) and a Bernoulli output: the distributions in closed form, every command on such
models, a grayscale model that learns, and lossless compression of 1-channel images."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import random_images, tiny_config_dict
from PIL import Image

import vdvae_zoo
from vdvae_zoo import VDVAE, VDVAEConfig
from vdvae_zoo.cli import main
from vdvae_zoo.nn.dmol import (
    bernoulli_level_probs,
    bernoulli_nll,
    bernoulli_sample,
    dmol_level_probs,
    dmol_nll,
    dmol_sample,
    mixture_channels,
)
from vdvae_zoo.nn.head import output_channels


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def test_a_one_channel_mixture_equals_its_closed_form():
    """M = 2 components over 1 channel: P(x) = sum_m w_m (sigmoid((x + 1/255 - mu_m) / s_m) - sigmoid(...-...))."""
    logits, means, log_scales = [0.3, -0.4], [0.1, -0.5], [-2.0, -3.0]
    params = torch.tensor(logits + means + log_scales, dtype=torch.float32).view(1, 1, 1, 6)
    assert mixture_channels(2, 1) == 6
    x = 30 / 127.5 - 1.0
    weights = np.exp(logits) / np.exp(logits).sum()
    p = sum(
        w * (_sigmoid((x + 1 / 255 - m) / math.exp(ls)) - _sigmoid((x - 1 / 255 - m) / math.exp(ls)))
        for w, m, ls in zip(weights, means, log_scales, strict=False)
    )
    nll = dmol_nll(params, torch.tensor([[[[x]]]]), 2)
    assert float(nll) == pytest.approx(-math.log(p), rel=1e-5)
    levels = dmol_level_probs(params, 2, 0, channels=1)[0, 0, 0]
    assert float(levels[30]) == pytest.approx(p, rel=1e-5) and float(levels.sum()) == pytest.approx(1.0, abs=1e-9)
    # sampling: component by Gumbel-max of the first uniform, then the logistic's inverse CDF of the second
    u_pick, u = torch.full((1, 1, 1, 2), 0.5), torch.full((1, 1, 1, 1), 0.7)
    pick = int(np.argmax(np.array(logits) - np.log(-np.log(0.5))))
    value = means[pick] + math.exp(log_scales[pick]) * math.log(0.7 / 0.3)
    pixel = dmol_sample(params, 2, uniforms=[u_pick, u], channels=1)
    assert pixel.shape == (1, 1, 1, 1) and int(pixel) == int((min(max(value, -1), 1) + 1) * 127.5)


def test_a_two_channel_mixture_conditions_the_second_channel_on_the_first():
    """One component, C = 2: the second channel's mean is shifted by tanh(coefficient) * x_0."""
    mean, log_scale, coefficient = [-0.68, 0.1], [-2.5, -2.0], 0.8
    params = torch.tensor([0.0] + mean + log_scale + [coefficient], dtype=torch.float32).view(1, 1, 1, 6)
    x0, x1 = 40 / 127.5 - 1.0, 82 / 127.5 - 1.0  # both in the bulk (the far tail uses the density instead)

    def bin_mass(x, m, ls):
        return _sigmoid((x + 1 / 255 - m) / math.exp(ls)) - _sigmoid((x - 1 / 255 - m) / math.exp(ls))

    p = bin_mass(x0, mean[0], log_scale[0]) * bin_mass(x1, mean[1] + math.tanh(coefficient) * x0, log_scale[1])
    nll = dmol_nll(params, torch.tensor([[[[x0, x1]]]]), 1)
    assert float(nll) * 2 == pytest.approx(-math.log(p), rel=1e-5)  # nats per dim: two dims


def test_the_bernoulli_output_in_closed_form():
    logits = torch.tensor([[[[1.5], [-0.5]]]])  # (1, 1, 2, 1)
    target = torch.tensor([[[[1.0], [-1.0]]]])  # a 255 pixel, then a 0 pixel
    expected = (math.log1p(math.exp(-1.5)) + math.log1p(math.exp(-0.5))) / 2
    assert float(bernoulli_nll(logits, target)) == pytest.approx(expected, rel=1e-6)
    u = torch.tensor([[[[0.5], [0.5]]]])
    assert bernoulli_sample(logits, uniforms=[u]).flatten().tolist() == [255, 0]  # sigmoid(1.5) > .5 > sigmoid(-.5)
    probs = bernoulli_level_probs(logits, 0)
    assert float(probs[0, 0, 0, 255]) == pytest.approx(_sigmoid(1.5)) and float(probs.sum(-1).max()) == pytest.approx(1)


def test_config_checks_channels_and_output():
    with pytest.raises(ValueError, match="image_channels must be 1"):
        VDVAEConfig.from_dict(tiny_config_dict(image_channels=5))
    with pytest.raises(ValueError, match="output must be one of"):
        VDVAEConfig.from_dict(tiny_config_dict(output="gaussian"))
    assert VDVAEConfig.from_dict(tiny_config_dict(image_channels=1)).dims_per_image == 16 * 16
    assert output_channels(VDVAEConfig.from_dict(tiny_config_dict(output="bernoulli", image_channels=2))) == 2


@pytest.mark.parametrize("channels,output", [(1, "dmol"), (2, "dmol"), (4, "dmol"), (1, "bernoulli")])
def test_every_command_works_on_other_channel_counts(tmp_path, channels, output):
    runner = CliRunner()
    args = ["new", "tiny32", "-o", str(tmp_path / "m"), "--image-channels", str(channels)]
    assert runner.invoke(main, args + ["--output-distribution", output]).exit_code == 0
    model = vdvae_zoo.load(tmp_path / "m", device="cpu")
    images = model.sample(3, seeds=[1, 2, 3])
    assert images.shape == (3, 32, 32, channels)
    if output == "bernoulli":
        assert set(images.unique().tolist()) <= {0, 255}
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(images.numpy()):
        Image.fromarray(im[..., 0] if channels == 1 else im).save(folder / f"{i}.png")
    # an RGB file is read as the model's channels
    Image.fromarray(random_images(1, size=32, seed=5).numpy()[0]).save(folder / "rgb.png")
    m = str(tmp_path / "m")
    for command in (
        ["bpd", "--model", m, str(folder)],
        ["sample", m, "-n", "2", "-o", str(tmp_path / "s.png")],
        ["encode", m, str(folder), "-o", str(tmp_path / "z.safetensors")],
        ["reconstruct", m, str(folder / "0.png"), "-o", str(tmp_path / "r.png")],
        ["interpolate", m, str(folder / "0.png"), str(folder / "1.png"), "-o", str(tmp_path / "i.png")],
        ["eval", m, "--data", str(folder), "-o", str(tmp_path / "e.json")],
        ["ood", m, "--in", str(folder), "--ood", str(folder), "-o", str(tmp_path / "o.json")],
    ):
        result = runner.invoke(main, command)
        assert result.exit_code == 0, (command[0], result.output)
    # bits per dim divide by H * W * C: the mean of the per-pixel NLL over C channels
    r = model.likelihood(images, seeds=[1, 2, 3])
    assert torch.allclose(r.bpd, r.neg_elbo / math.log(2)) and model.config.dims_per_image == 32 * 32 * channels


def _grey_crops(n, size, seed):
    """Grey photo-like crops: smooth blobs, so that a model can learn something in a few dozen steps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        cy, cx, r = rng.uniform(4, size - 4, 2).tolist() + [rng.uniform(3, size / 2)]
        blob = 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)) + 30
        out.append(np.clip(blob + rng.normal(0, 4, blob.shape), 0, 255).astype(np.uint8))
    return out


@pytest.mark.slow  # a short training run
def test_a_grayscale_folder_goes_from_new_through_finetune_to_bpd_and_sample(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["new", "tiny32", "-o", str(tmp_path / "grey"), "--image-channels", "1"]).exit_code == 0
    folder = tmp_path / "scans"
    folder.mkdir()
    for i, im in enumerate(_grey_crops(48, 32, seed=0)):
        Image.fromarray(im, "L").save(folder / f"{i:02d}.png")
    result = runner.invoke(
        main,
        [
            "finetune",
            "--model",
            str(tmp_path / "grey"),
            "--data",
            str(folder),
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "60",
            "--batch-size",
            "8",
            "--val-every",
            "20",
            "--sample-every",
            "0",
            "--lr",
            "3e-3",
            "--ema-rate",
            "0.9",
        ],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    val = [r["val_bpd"] for r in records if r.get("val_bpd") is not None]
    before = runner.invoke(main, ["bpd", "--model", str(tmp_path / "grey"), str(folder)])
    first = float(before.output.split("mean bpd: ")[1].split()[0])
    assert len(val) == 3 and val[-1] < val[0] - 0.3 and val[-1] < first - 0.3, (first, val)
    after = runner.invoke(main, ["bpd", "--model", str(tmp_path / "run"), str(folder)])
    assert after.exit_code == 0 and float(after.output.split("mean bpd: ")[1].split()[0]) < first - 0.3
    sampled = runner.invoke(main, ["sample", str(tmp_path / "run"), "-n", "4", "--outdir", str(tmp_path / "s")])
    assert sampled.exit_code == 0
    assert Image.open(tmp_path / "s" / "000000.png").mode == "L"


def test_compress_round_trips_a_one_channel_model_exactly(tmp_path):
    pytest.importorskip("constriction")
    from vdvae_zoo import compress, decompress

    torch.manual_seed(0)
    model = VDVAE(VDVAEConfig.from_dict(tiny_config_dict(image_channels=1))).eval()
    images = [im[..., None] for im in _grey_crops(40, 16, seed=3)]
    archive, report = compress(model, images)
    assert sum(r.mode == "bits-back" for r in report.records) > 0, [r.mode for r in report.records]
    restored, names = decompress(model, archive)
    assert len(restored) == 40
    for a, b in zip(images, restored, strict=False):
        assert b.shape == (16, 16, 1) and np.array_equal(a, b)


@pytest.mark.parametrize("channels,output", [(4, "dmol"), (1, "bernoulli"), (2, "dmol")])
def test_compress_round_trips_other_channel_counts_and_binary_images(channels, output):
    pytest.importorskip("constriction")
    from vdvae_zoo import compress, decompress

    torch.manual_seed(1)
    model = VDVAE(VDVAEConfig.from_dict(tiny_config_dict(image_channels=channels, output=output))).eval()
    # enough images that the later ones are coded with bits-back (binary WebPs are small: more are needed first)
    grey = [im[..., None] for im in _grey_crops(100 if output == "bernoulli" else 40, 16, seed=5)]
    if output == "bernoulli":
        images = [np.where(im > 120, 255, 0).astype(np.uint8) for im in grey]
    else:
        images = [np.concatenate([im] * channels, axis=2) for im in grey]
        for k, im in enumerate(images):
            im[..., -1] = (np.arange(256).reshape(16, 16) + 17 * k) % 256  # an alpha/second channel of its own
    archive, report = compress(model, images)
    assert sum(r.mode == "bits-back" for r in report.records) > 0
    restored, _ = decompress(model, archive)
    assert len(restored) == len(images)
    for a, b in zip(images, restored, strict=False):
        assert b.shape == (16, 16, channels) and np.array_equal(a, b)
