"""Issue #16: a user's files are never replaced without asking, foreseeable mistakes get one sentence, bombs
are refused before they go off, and a newcomer finds a small model and the meaning of MODEL."""

import json
import os
import stat
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import REPO, TINY, entry, golden_config, write_manifest
from PIL import Image

import vdvae_zoo
from vdvae_zoo.cli import main
from vdvae_zoo.data.images import make_grid, sample_photos


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture()
def model_dir(tmp_path, golden_model):
    return golden_model.save_pretrained(tmp_path / "tiny32")


def _one_line_error(result, fragment):
    assert result.exit_code != 0 and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: ") and fragment in lines[-1], result.output
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------------------------- 0b: bombs
def test_a_tiny_png_of_100_megapixels_is_skipped_from_its_header(tmp_path, model_dir):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (10000, 10000)).save(folder / "bomb.png")  # 97 kB on disk
    Image.fromarray(sample_photos(1, 32)[0]).save(folder / "ok.png")
    result = run("bpd", folder, "--model", model_dir)
    assert result.exit_code == 0 and "skipped" in result.output and "bomb.png: is 10000x10000" in result.output
    result = run("bpd", folder, "--model", model_dir, "--resize", "center-crop")
    assert "bomb.png: is 10000x10000 (95 Mpx), more than the 64 Mpx this reads" in result.output


def test_a_400_megapixel_png_ends_no_auto_model_run_with_a_traceback(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("1", (20000, 20000)).save(folder / "huge.png")
    result = run("bpd", folder)
    assert "Traceback" not in result.output and "too large to read safely" in result.output


def test_a_th_archive_that_would_inflate_is_refused_before_reading(tmp_path):
    torch.save({"w": torch.zeros(16 * 2**20)}, tmp_path / "big.th")
    with zipfile.ZipFile(tmp_path / "big.th") as src, zipfile.ZipFile(tmp_path / "bomb.th", "w") as dst:
        for member in src.infolist():
            dst.writestr(member.filename, src.read(member.filename), compress_type=zipfile.ZIP_DEFLATED)
    assert (tmp_path / "bomb.th").stat().st_size < 2**20
    result = run("inspect", tmp_path / "bomb.th")
    _one_line_error(result, "would inflate to 67,109,")


# -------------------------------------------------------------------------------------- 1-3: no data loss
def test_convert_refuses_an_existing_folder_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(golden_config()))
    _one_line_error(run("convert", TINY / "model.th", "--config", config, "-o", out), "exists")
    assert (out / "mine.txt").read_text() == "keep"


@pytest.mark.slow  # several seconds (processes, training, long chains): the quick run skips it
def test_examples_never_replace_files_without_overwrite(tmp_path):
    (tmp_path / "samples.png").write_bytes(b"mine")
    p = subprocess.run(
        [sys.executable, str(REPO / "examples" / "sample_grid.py"), "--tiny", "-n", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode != 0 and "samples.png exists; pass --overwrite" in p.stderr
    assert (tmp_path / "samples.png").read_bytes() == b"mine"
    # make_guide's default output is the committed docs/images: refused when run from the repository root
    p = subprocess.run(
        [sys.executable, "examples/make_guide.py", "--tiny"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert p.returncode != 0 and "docs/images exists; pass --overwrite" in p.stderr


def test_written_weights_are_readable_by_others_as_the_umask_allows(model_dir):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "config.json", "README.md"):
        assert stat.S_IMODE((model_dir / name).stat().st_mode) == 0o666 & ~umask, name
    assert stat.S_IMODE(model_dir.stat().st_mode) == 0o777 & ~umask


# -------------------------------------------------------------------------------- 4-6: one clear sentence
def test_an_unreachable_source_is_one_error_with_the_ways_out(tmp_path, hf_home):
    m = write_manifest(tmp_path / "m.json", [entry("tiny", golden_config(), url="http://127.0.0.1:9/x.th")])
    with pytest.raises(ConnectionError) as caught:
        vdvae_zoo.load("tiny", manifest=m)
    text = str(caught.value)
    for fragment in (
        "http://127.0.0.1:9/x.th",
        "about 1 MB",
        "vdvae-zoo download tiny",
        "HF_HUB_OFFLINE=1",
        "load(FILE, config=...)",
    ):
        assert fragment in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no chain of three exceptions
    assert not (hf_home / "hub" / "vdvae-zoo" / "originals").exists()


def test_inspecting_a_picture_never_advises_unpickling(tmp_path):
    Image.fromarray(sample_photos(1, 32)[0]).save(tmp_path / "x.png")
    result = run("inspect", tmp_path / "x.png")
    _one_line_error(result, "refused to load")
    assert "weights_only=False" not in result.output


def test_info_reads_a_weights_file(model_dir):
    result = run("info", model_dir / "model.safetensors")
    assert result.exit_code == 0 and "stochastic layers per resolution: 1: 1, 4: 3" in result.output


def test_a_cuda_device_on_a_cpu_build_is_one_sentence(model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _one_line_error(run("sample", model_dir, "--device", "cuda", "-o", model_dir / "s.png"), "sees no CUDA GPU")


# --------------------------------------------------------------------------------------- 8-9, 12: newcomers
def test_a_small_model_in_one_command(tmp_path):
    result = run("new", "tiny32", "-o", tmp_path / "tiny")
    assert result.exit_code == 0, result.output
    assert run("sample", tmp_path / "tiny", "-n", 2, "-o", tmp_path / "s.png").exit_code == 0
    assert Image.open(tmp_path / "s.png").size == (2 * 130 + 2, 130 + 2)  # 32x32 samples shown 4x larger
    _one_line_error(run("new", "tiny32", "-o", tmp_path / "tiny"), "exists; pass --overwrite")


def test_every_command_that_takes_a_model_says_what_model_is():
    for name in ("bpd", "sample", "encode", "reconstruct", "interpolate", "info", "finetune"):
        text = run(name, "--help").output
        assert "a released name" in text and "owner/name" in text, name


def test_the_config_reference_names_every_field():
    text = (REPO / "docs" / "config.md").read_text()
    for field in vdvae_zoo.VDVAEConfig.__dataclass_fields__:
        assert f"`{field}`" in text, field
    for preset in ("cifar10", "imagenet32", "imagenet64", "ffhq256", "ffhq1024", "tiny32"):
        assert preset in text


def test_reconstruct_keeps_only_columns_the_model_has(tmp_path):
    run("new", "tiny32", "-o", tmp_path / "tiny")  # 13 layers: 1, 4, all
    Image.fromarray(sample_photos(1, 32)[0]).save(tmp_path / "a.png")
    result = run("reconstruct", tmp_path / "tiny", tmp_path / "a.png", "-o", tmp_path / "r.png")
    assert result.exit_code == 0 and "columns original + keep 1, 4, 13" in result.output, result.output


def test_bpd_prints_each_image_and_writes_a_summary(tmp_path, model_dir):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(sample_photos(1, 32)[0]).save(folder / "one.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "small.png")
    result = run("bpd", folder, "--model", model_dir, "-o", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    assert any(line.endswith("one.png") and float(line.split()[0]) > 0 for line in result.output.splitlines())
    assert "(one image: no standard error)" in result.output and "nan" not in result.output
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["summary"]["images"] == 1 and report["summary"]["stderr_bpd"] is None
    assert report["skipped"][0]["path"].endswith("small.png") and report["options"]["samples"] == 1
    run("bpd", folder, "--model", model_dir, "-o", tmp_path / "s.csv")
    assert b"\r\n" not in (tmp_path / "s.csv").read_bytes()


def test_grids_of_small_images_are_enlarged_for_viewing():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    assert make_grid(images, ncols=2).size == (2 * 34 + 2, 34 + 2)
    assert make_grid(images, ncols=2, zoom=None).size == (2 * 130 + 2, 130 + 2)
    assert make_grid(np.zeros((1, 256, 256, 3), np.uint8), zoom=None).size == (260, 260)


def test_kl_chart_labels_do_not_overlap():
    from PIL import ImageDraw

    from vdvae_zoo.data.plots import bar_layout, resolution_labels

    with torch.device("meta"):
        model = vdvae_zoo.VDVAE(vdvae_zoo.VDVAEConfig.from_preset("ffhq256"))
    draw = ImageDraw.Draw(Image.new("RGB", (900, 420)))
    labels = resolution_labels(bar_layout(model.num_layers, 900, 60), model.layer_resolutions, 350, draw.textlength)
    for row in {y for (_, y), _ in labels}:
        spans = sorted((x, x + draw.textlength(t)) for (x, y), t in labels if y == row)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
    assert {"1x1", "32x32", "64x64", "256x256"} <= {t for _, t in labels}
