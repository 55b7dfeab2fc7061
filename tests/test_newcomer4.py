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


def test_push_to_hub_without_a_network_is_one_sentence(monkeypatch, tiny):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # a loopback port where nothing listens
    with pytest.raises(ConnectionError, match=r"push_to_hub\('me/x'\): the upload to http://127.0.0.1:9 did not go"):
        tiny.push_to_hub("me/x", token="hf_not_a_token")


def test_a_grey_models_grid_is_grey_as_its_files_are(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["new", "tiny32", "-o", str(tmp_path / "g"), "--image-channels", "1"]).exit_code == 0
    assert (
        runner.invoke(main, ["sample", str(tmp_path / "g"), "-n", "4", "-o", str(tmp_path / "grid.png")]).exit_code == 0
    )
    assert (
        runner.invoke(main, ["sample", str(tmp_path / "g"), "-n", "2", "--outdir", str(tmp_path / "s")]).exit_code == 0
    )
    assert Image.open(tmp_path / "grid.png").mode == "L" == Image.open(next((tmp_path / "s").glob("*.png"))).mode


def test_restores_spread_image_uses_its_own_range_and_says_it(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["new", "tiny32", "-o", str(tmp_path / "m")]).exit_code == 0
    images = image_folder(tmp_path / "imgs", 1, size=32, seed=2)
    args = ["restore", str(tmp_path / "m"), str(images / "00.png"), "--denoise", "10", "--samples", "3", "--steps",
            "2", "-o", str(tmp_path / "r.png")]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    spread = np.asarray(Image.open(tmp_path / "r.std.png"))
    assert spread.max() == 255 and "scaled to its own range" in result.output and "levels of 255" in result.output


def test_the_roc_legend_stands_beside_the_curves():
    from vdvae_zoo.data.plots import roc_chart

    series = {f"score {i} (AUROC 0.{i})": [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)] for i in range(8)}  # up the left edge
    img = np.asarray(roc_chart(series).convert("L"))
    pad = 50
    frame = np.flatnonzero(img[pad + 100] == 0)  # the plot's frame, black, on a row below the keys' height
    right = frame.max()
    assert img.shape == (480, 640) and right < 640 - pad - 100  # a column for the keys beside the plot
    top_left = img[pad + 5 : pad + 140, pad + 10 : pad + 200]  # inside the plot, where the curves run along the top
    assert (top_left == 255).mean() > 0.97  # no legend text there
    assert (img[pad : pad + 140, right + 5 :] < 255).sum() > 200  # the keys are in the column beside it


def test_the_cache_command_lists_sizes_and_removes_a_model(tmp_path, hf_home, source):
    from helpers import entry, golden_config, write_manifest

    manifest = write_manifest(
        tmp_path / "m.json", [entry("tiny", golden_config(), url=f"{source.url}/tiny32-model-ema.th")]
    )
    vdvae_zoo.load("tiny", manifest=manifest, device="cpu")  # downloaded and converted into the cache
    runner = CliRunner()
    listed = runner.invoke(main, ["cache", "--manifest", str(manifest)])
    assert listed.exit_code == 0 and "tiny" in listed.output and "converted" in listed.output, listed.output
    assert "MiB" in listed.output and str(hf_home / "hub") in listed.output
    assert vdvae_zoo.list_models(cached=True, manifest=manifest) == ["tiny"]
    removed = runner.invoke(main, ["cache", "--manifest", str(manifest), "rm", "tiny"])
    assert removed.exit_code == 0 and "removed tiny" in removed.output, removed.output
    assert vdvae_zoo.list_models(cached=True, manifest=manifest) == []
    again = runner.invoke(main, ["cache", "--manifest", str(manifest), "rm", "tiny"])
    assert again.exit_code == 1 and "holds no model 'tiny'" in again.output


def test_the_publishing_recipe_carries_the_measured_results(tmp_path, monkeypatch):
    """README's recipe: eval --card into a fine-tune's folder, then push_to_hub uploads the card with its numbers
    (the Hub's two calls are replaced: no network here)."""
    import huggingface_hub
    from huggingface_hub import ModelCard

    runner = CliRunner()
    assert runner.invoke(main, ["new", "tiny32", "-o", str(tmp_path / "m")]).exit_code == 0
    images = image_folder(tmp_path / "imgs", 3, size=32, seed=5)
    card = runner.invoke(main, ["eval", str(tmp_path / "m"), "--data", str(images), "--card", str(tmp_path / "m")])
    assert card.exit_code == 0, card.output
    uploaded = {}

    class Commit:
        oid = "a" * 40

    def upload_folder(self, *, repo_id, folder_path, commit_message):
        uploaded["card"] = ModelCard.load(f"{folder_path}/README.md")
        return Commit()

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **k: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    pin = vdvae_zoo.load(tmp_path / "m", device="cpu").push_to_hub("me/tiny", token="x")
    assert pin["revision"] == "a" * 40 and len(pin["sha256"]) == 64
    assert (
        len(uploaded["card"].data.eval_results) == 1
        and "measured with vdvae-zoo" in uploaded["card"].data.eval_results[0].source_name
    )


def test_the_exact_draw_follows_the_mixture_the_likelihood_scores():
    """#38: pixels drawn with exact=True follow dmol_level_probs (channel 0, and channel 1 given channel 0's
    level); the original's draw (the default, for golden parity) is a half level low."""
    from vdvae_zoo.nn.dmol import dmol_level_probs, dmol_sample

    torch.manual_seed(0)
    m, n = 2, 200_000
    params = torch.randn(1, 1, 1, 10 * m)
    for c in range(3):  # the original layout: per channel [M means, M log-scales, M coefficients]
        start = m + 3 * m * c
        params[..., start : start + m] = torch.tensor([-0.2, 0.3])  # means well inside [-1, 1]
        params[..., start + m : start + 2 * m] = -4.0  # scales of a few levels, where a half level shows
    params = params.expand(n, 1, 1, -1)
    generator = torch.Generator().manual_seed(1)
    exact = dmol_sample(params, m, generator, exact=True).reshape(n, 3).long()
    original = dmol_sample(params, m, torch.Generator().manual_seed(1)).reshape(n, 3).long()
    p0 = dmol_level_probs(params[:1], m, 0).reshape(256)

    def tv(levels, probs):
        return 0.5 * (torch.bincount(levels, minlength=256).double() / len(levels) - probs).abs().sum().item()

    assert tv(exact[:, 0], p0) < 0.02 < tv(original[:, 0], p0)
    # channel 1 given channel 0's most frequent level
    level = int(exact[:, 0].mode().values)
    given = exact[exact[:, 0] == level, 1]
    earlier = torch.full((1, 1, 1, 1), level / 127.5 - 1.0, dtype=torch.float64)
    p1 = dmol_level_probs(params[:1], m, 1, earlier).reshape(256)
    assert len(given) > 5_000 and tv(given, p1) < 0.04
