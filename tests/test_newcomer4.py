"""A newcomer's hour, round 4 (#36): the inputs people have, list_models as timm's, and the trainer's defaults
for a folder whose architecture is a released preset's."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import image_folder
from PIL import Image

import vdvae_zoo
from vdvae_zoo.cli import main
from vdvae_zoo.config import VDVAEConfig, resolve_config


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return vdvae_zoo.VDVAE(resolve_config("tiny32")).eval()


def test_the_api_takes_pil_images_lists_floats_and_nchw_as_the_same_pixels(tiny):
    pixels = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    seeds = [5, 6, 7]
    expected = tiny.likelihood(pixels, seeds=seeds).bpd
    as_tensor = torch.from_numpy(pixels)
    for given in (
        [Image.fromarray(p) for p in pixels],  # a list of PIL images
        list(pixels),  # a list of arrays
        as_tensor.float() / 255,  # floats in [0, 1], NHWC
        as_tensor.permute(0, 3, 1, 2).float() / 255,  # torchvision's NCHW floats
        as_tensor.permute(0, 3, 1, 2).numpy(),  # NCHW uint8
    ):
        torch.testing.assert_close(tiny.likelihood(given, seeds=seeds).bpd, expected)
    one = tiny.likelihood(Image.fromarray(pixels[0]), seeds=seeds[:1]).bpd  # one PIL image is a batch of one
    torch.testing.assert_close(one, expected[:1])


def test_a_grey_model_reads_pil_in_its_channels_and_says_its_channel_count():
    grey = vdvae_zoo.VDVAE(VDVAEConfig.from_dict({**resolve_config("tiny32").to_dict(), "image_channels": 1})).eval()
    rgb = Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    expected = grey.likelihood(np.asarray(rgb.convert("L"))[None, ..., None], seeds=[0]).bpd
    torch.testing.assert_close(grey.likelihood(rgb, seeds=[0]).bpd, expected)  # as the CLI reads a file: L
    with pytest.raises(ValueError, match=r"\(N, 32, 32, 1\)"):
        grey.likelihood("not images")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        grey.likelihood(torch.full((1, 32, 32, 1), 2.0))


def test_list_models_takes_a_pattern_and_a_cache_filter(hf_home):
    names = vdvae_zoo.list_models()
    assert vdvae_zoo.list_models("cifar*") == [n for n in names if n.startswith("cifar")] != []
    assert vdvae_zoo.list_models("*64*") == ["imagenet64"]
    assert vdvae_zoo.list_models(cached=True) == [] and vdvae_zoo.list_models(cached=False) == names


def test_a_folder_with_a_preset_architecture_trains_with_the_presets_defaults(tmp_path):
    from vdvae_zoo.training.options import GENERIC_DEFAULTS, TRAINING_PRESETS, TrainOptions, preset_of

    folder = tmp_path / "in64"
    folder.mkdir()
    (folder / "config.json").write_text(VDVAEConfig.from_preset("imagenet64").to_json())  # what `new` writes
    assert preset_of(resolve_config(folder / "config.json")) == "imagenet64"
    assert preset_of(resolve_config("tiny32")) is None
    hp = TrainOptions(data="d", out="o", model=str(folder), lr=3e-4).resolve("imagenet64")
    assert hp.lr == 3e-4 and hp.sources["lr"] == "given"
    assert hp.ema_rate == TRAINING_PRESETS["imagenet64"]["ema_rate"] != GENERIC_DEFAULTS["ema_rate"]
    assert hp.sources["ema_rate"] == "preset imagenet64" and hp.sources["grad_clip"] == "preset imagenet64"
    generic = TrainOptions(data="d", out="o", config="tiny32").resolve(None)
    assert generic.sources["lr"] == "generic" and generic.lr == GENERIC_DEFAULTS["lr"]


def test_the_header_says_where_each_default_came_from(tmp_path):
    images = image_folder(tmp_path / "imgs", 6, size=32, seed=1)
    args = ["finetune", "--data", str(images), "--out", str(tmp_path / "run"), "--config", "tiny32", "--steps", "1",
            "--batch-size", "2", "--lr", "0.002", "--val-every", "0", "--sample-every", "0"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    defaults = next(line for line in result.output.splitlines() if line.startswith("defaults:"))
    assert "ema-rate from generic" in defaults and "lr from" not in defaults  # --lr was given
    help_text = CliRunner().invoke(main, ["finetune", "--help"]).output
    assert "0: only the final validation" in " ".join(help_text.split())
