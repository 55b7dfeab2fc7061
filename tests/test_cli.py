"""The vdvae-zoo command line, through click's CliRunner and as the installed console script."""

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import TINY, entry, write_manifest
from PIL import Image
from safetensors.torch import load_file

import vdvae_zoo
from vdvae_zoo.cli import main
from vdvae_zoo.compute.batching import image_seed
from vdvae_zoo.data.files import sha256_file
from vdvae_zoo.data.images import read_image, sample_photos


def photos(n=4):
    return sample_photos(n, 32)


@pytest.fixture()
def model_dir(tmp_path, golden_model):
    return str(golden_model.save_pretrained(tmp_path / "tiny32"))


@pytest.fixture()
def image_dir(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    pics = photos()
    Image.fromarray(pics[0]).save(folder / "astronaut.png")
    Image.fromarray(pics[1]).save(folder / "sub" / "cat.jpg", quality=95)
    Image.fromarray(pics[2]).save(folder / "coffee.webp", lossless=True)
    Image.fromarray(pics[3]).save(folder / "rocket.bmp")
    Image.fromarray(pics[0]).save(folder / ".hidden.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def test_bpd_matches_the_python_api(tmp_path, image_dir, model_dir):
    out = tmp_path / "scores.csv"
    result = run("bpd", image_dir, "--model", model_dir, "-o", out)
    assert result.exit_code == 0, result.output
    assert "images: 4 scored, 0 skipped" in result.output and "mean bpd:" in result.output
    rows = list(csv.DictReader(out.open()))
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == ["astronaut.png", "coffee.webp", "rocket.bmp", "cat.jpg"]
    images = np.stack([read_image(r["path"]) for r in rows])
    model = vdvae_zoo.load(model_dir, device="cpu")
    expected = model.likelihood(images, seeds=[image_seed(0, int(r["index"])) for r in rows])  # the seed rule
    np.testing.assert_allclose([float(r["bpd"]) for r in rows], expected.bpd.numpy(), rtol=1e-6)
    np.testing.assert_allclose([float(r["rate_bpd"]) for r in rows], expected.rate_bpd.numpy(), rtol=1e-6)
    mean = float(result.output.split("mean bpd: ")[1].split()[0])
    assert mean == pytest.approx(expected.bpd.mean().item(), abs=1e-4)
    # never overwritten without --overwrite
    again = run("bpd", image_dir, "--model", model_dir, "-o", out)
    assert again.exit_code != 0 and "--overwrite" in again.output
    assert run("bpd", image_dir, "--model", model_dir, "-o", out, "--overwrite").exit_code == 0


def test_bad_files_are_skipped_with_one_warning_each(tmp_path, image_dir, model_dir):
    good = image_dir / "astronaut.png"
    (image_dir / "truncated.png").write_bytes(good.read_bytes()[:200])
    (image_dir / "fake.jpg").write_text("hello")
    Image.fromarray(photos(1)[0]).resize((64, 64)).save(image_dir / "big.png")
    result = run("bpd", image_dir, "--model", model_dir, "-o", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 3
    assert any("fake.jpg" in w and "not an image" in w for w in warnings)
    assert any("big.png" in w and "64x64" in w and "--resize center-crop" in w for w in warnings)
    assert "4 scored, 3 skipped" in result.output
    assert len(json.loads((tmp_path / "s.json").read_text())["images"]) == 4
    strict = run("bpd", image_dir, "--model", model_dir, "--strict")
    assert strict.exit_code != 0 and "--strict" in strict.output
    resized = run("bpd", image_dir, "--model", model_dir, "--resize", "center-crop")
    assert "5 scored, 2 skipped" in resized.output


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16"])
def test_image_modes_become_rgb(tmp_path, mode):
    rgb = photos(1)[0]
    img = Image.fromarray(rgb)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)
        assert img.mode == "I;16"
    elif mode == "RGBA":
        arr = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])  # fully transparent: white
        img = Image.fromarray(arr, "RGBA")
    else:
        img = img.convert(mode)
    path = tmp_path / ("x.tif" if mode in ("I;16", "CMYK") else "x.png")
    img.save(path)
    out = read_image(path)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    if mode == "RGBA":
        assert (out == 255).all()
    if mode in ("L", "I;16"):
        np.testing.assert_array_equal(out[..., 0], np.asarray(Image.fromarray(rgb).convert("L")))


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3) and out[:15].mean() > 200 and out[25:].mean() < 50


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["bpd", "{empty}"], "no image files found"),
        (["bpd", "{missing}"], "does not exist"),
        (["bpd", "{images}", "--model", "nosuchmodel"], "unknown model 'nosuchmodel'"),
        (["sample", "{model}", "-t", "hot"], "is not a number"),
        (["sample", "{model}", "-t", "1.0,0.5"], "13 decoder layers"),
        (["sample", "{model}", "-t", "-1"], "temperatures must be finite numbers from 0 to 100"),
        (["sample", "{model}", "-t", "nan"], "temperatures must be finite numbers from 0 to 100"),
    ],
)
def test_user_errors_are_one_line(tmp_path, image_dir, model_dir, args, fragment):
    (tmp_path / "empty").mkdir()
    subst = {
        "{empty}": tmp_path / "empty",
        "{missing}": tmp_path / "missing",
        "{images}": image_dir,
        "{model}": model_dir,
    }
    result = run(*[subst.get(a, a) for a in args])
    assert result.exit_code != 0
    assert "Traceback" not in result.output and fragment in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_auto_model_picks_by_size_and_refuses_mixed_sizes(tmp_path, image_dir, golden_expected, monkeypatch):
    from fakehub import FileServer

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    server = FileServer({"t.th": (TINY / "model-ema.th").read_bytes()})
    try:
        manifest = tmp_path / "m.json"
        manifest.write_text(
            json.dumps(
                {
                    "models": [
                        {
                            "name": "cifar10",
                            "preset": "cifar10",
                            "config": golden_expected["config"] | golden_expected["preprocess"],
                            "dataset": "golden",
                            "resolution": 32,
                            "bits": 8,
                            "parameters": 135078,
                            "license": "MIT",
                            "hub": {"repo_id": "x/y", "revision": None, "sha256": None},
                            "source": {"url": server.url + "/t.th"},
                        }
                    ]
                }
            )
        )
        result = run("bpd", image_dir, "--manifest", manifest)
        assert result.exit_code == 0, result.output
        assert "model: cifar10 (picked by image size" in result.output and "4 scored" in result.output
    finally:
        server.close()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image_dir / "big.png")
    mixed = run("bpd", image_dir)
    assert mixed.exit_code != 0 and "mixed sizes" in mixed.output and "--resize" in mixed.output
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(odd / "a.png")
    assert "no released model works at 48x48" in run("bpd", odd).output


def test_sample_is_reproducible_and_writes_pngs(tmp_path, model_dir):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert run("sample", model_dir, "-n", "4", "-t", "0.8", "--seed", "3", "-o", a).exit_code == 0
    assert run("sample", model_dir, "-n", "4", "-t", "0.8", "--seed", "3", "-o", b).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    result = run("sample", model_dir, "-n", "3", "-t", "1:1.0,16:0.5", "--outdir", tmp_path / "many")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == [f"00000{i}.png" for i in range(3)] + [
        "samples.json"
    ]
    assert np.asarray(Image.open(tmp_path / "many" / "000000.png")).shape == (32, 32, 3)


def test_encode_and_reconstruct(tmp_path, image_dir, model_dir):
    out = tmp_path / "z.safetensors"
    result = run("encode", model_dir, image_dir, "-o", out)
    assert result.exit_code == 0, result.output
    tensors = load_file(str(out))
    assert len(tensors) == 13 and tensors["z.0"].shape == (4, 4, 1, 1)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert len(json.loads(f.metadata()["paths"])) == 4
    grid = tmp_path / "fig4.png"
    result = run(
        "reconstruct", model_dir, image_dir / "astronaut.png", image_dir / "rocket.bmp", "--keep", "1,4,all", "-o", grid
    )
    assert result.exit_code == 0, result.output
    assert Image.open(grid).size == (4 * 130 + 2, 2 * 130 + 2)  # 32x32 cells shown 4x larger (128 + 2 padding)


def test_list_info_inspect_convert(tmp_path):
    listing = run("list")
    assert listing.exit_code == 0 and "ffhq1024" in listing.output and "UNVERIFIED" in listing.output
    info = run("info", "ffhq256")
    assert info.exit_code == 0 and "5-bit" in info.output and "256: 1" in info.output and "total 66" in info.output
    inspected = run("inspect", TINY / "model.th", "--config", "cifar10")
    assert inspected.exit_code == 0 and "encoder: 14 blocks" in inspected.output and "DIFFERENT" in inspected.output
    out = tmp_path / "conv"
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(json.loads((TINY / "expected.json").read_text())["config"]))
    converted = run("convert", TINY / "model-cudatagged.th", "--config", cfg, "-o", out)
    assert converted.exit_code == 0, converted.output
    assert (out / "model.safetensors").is_file() and vdvae_zoo.load(out).num_layers == 13


@pytest.mark.slow  # several seconds (processes, training, long chains): the quick run skips it
def test_installed_console_script(tmp_path, image_dir, model_dir):
    # pip puts the script beside the interpreter; PATH need not include that folder.
    exe = shutil.which("vdvae-zoo", path=str(Path(sys.executable).parent)) or shutil.which("vdvae-zoo")
    assert exe, "the console script is installed with the package"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and vdvae_zoo.__version__ in version.stdout
    result = subprocess.run(
        [exe, "bpd", str(image_dir), "--model", model_dir, "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "images: 4 scored" in result.stdout
    missing = subprocess.run([exe, "bpd", str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr and "does not exist" in missing.stderr


def test_download_then_offline_and_publish_dry_run(tmp_path, golden_expected, monkeypatch):
    from fakehub import FileServer

    from vdvae_zoo.data.files import sha256_file

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    server = FileServer({"t.th": (TINY / "model-ema.th").read_bytes()})
    manifest = tmp_path / "m.json"
    manifest.write_text(
        json.dumps(
            {
                "models": [
                    {
                        "name": "tiny",
                        "preset": "cifar10",
                        "config": golden_expected["config"] | golden_expected["preprocess"],
                        "dataset": "golden",
                        "resolution": 32,
                        "bits": 8,
                        "parameters": 135078,
                        "license": "MIT",
                        "hub": {"repo_id": "x/tiny", "revision": None, "sha256": None},
                        "source": {"url": server.url + "/t.th"},
                    }
                ]
            }
        )
    )
    try:
        fetched = run("download", "tiny", "--manifest", manifest)
        assert fetched.exit_code == 0, fetched.output
    finally:
        server.close()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert vdvae_zoo.load("tiny", manifest=manifest).num_layers == 13
    pinned = tmp_path / "pinned.json"
    result = run(
        "publish",
        f"tiny={TINY / 'model.th'}",
        "--org",
        "test-org",
        "--dry-run",
        "--manifest",
        manifest,
        "--manifest-out",
        pinned,
    )
    assert result.exit_code == 0, result.output
    entry = json.loads(pinned.read_text())["models"][0]
    assert entry["source"]["sha256"] == sha256_file(TINY / "model.th")
    assert entry["hub"]["repo_id"] == "test-org/tiny" and len(entry["hub"]["sha256"]) == 64


def test_bpd_importance_weighted_and_kl_chart(tmp_path, image_dir, model_dir):
    out, chart = tmp_path / "iw.json", tmp_path / "kl.png"
    result = run("bpd", image_dir, "--model", model_dir, "--samples", 8, "--kl-chart", chart, "-o", out)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["images"]
    images = np.stack([read_image(r["path"]) for r in rows])
    expected = vdvae_zoo.load(model_dir, device="cpu").likelihood(
        images, n_samples=8, seeds=[image_seed(0, r["index"]) for r in rows]
    )  # the seed rule, as eval
    np.testing.assert_allclose([r["bpd_iw"] for r in rows], expected.bpd_iw.numpy(), rtol=1e-6)
    assert f"mean bpd_iw (8 samples): {expected.bpd_iw.mean().item():.4f}" in result.output
    assert Image.open(chart).size[0] > 0 and f"wrote {chart}" in result.output
    again = run("bpd", image_dir, "--model", model_dir, "--kl-chart", chart)
    assert again.exit_code != 0 and "--overwrite" in again.output


def test_interpolate_command(tmp_path, image_dir, model_dir):
    out = tmp_path / "path.png"
    a, b = image_dir / "astronaut.png", image_dir / "rocket.bmp"
    result = run("interpolate", model_dir, a, b, "--steps", 4, "--keep", 3, "-o", out, "--dtype", "bfloat16")
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (4 * 128 + 5 * 2, 128 + 2 * 2)  # 4 steps of 32x32, shown 4x larger
    bad = run("interpolate", model_dir, a, image_dir, "-o", tmp_path / "x.png")
    assert bad.exit_code != 0 and "directory" in bad.output


def test_every_command_has_help_with_an_example():
    for name, _command in main.commands.items():
        result = run(name, "--help")
        assert result.exit_code == 0 and "Example" in result.output and "vdvae-zoo" in result.output, name
    assert vdvae_zoo.__version__ in run("--version").output


@pytest.mark.parametrize("command", ["sample", "encode", "reconstruct", "interpolate"])
def test_existing_outputs_are_refused_before_any_work(tmp_path, image_dir, model_dir, command):
    out = tmp_path / ("z.safetensors" if command == "encode" else "out.png")
    out.write_bytes(b"precious")
    images = [str(Path(image_dir) / "astronaut.png"), str(Path(image_dir) / "rocket.bmp")]
    args = {
        "sample": ["sample", model_dir],
        "encode": ["encode", model_dir, *images],
        "reconstruct": ["reconstruct", model_dir, *images, "--keep", "1,all"],
        "interpolate": ["interpolate", model_dir, *images],
    }
    result = run(*args[command], "-o", out)
    assert result.exit_code != 0 and f"{out} exists; pass --overwrite" in result.output
    assert out.read_bytes() == b"precious"
    again = run(*args[command], "-o", out, "--overwrite")
    assert again.exit_code == 0, again.output
    assert out.read_bytes() != b"precious"


@pytest.fixture()
def golden_config(golden_config_dict):
    return golden_config_dict


def test_publish_uploads_and_pins_a_manifest_that_loads(tmp_path, hf_home, hub, golden_config, monkeypatch):
    """`vdvae-zoo publish` end to end, with only the Hub's upload protocol played by the fake Hub: the converted
    folder is uploaded, the manifest it writes pins that commit and sha256, and loading by name through it gives
    the original file's weights, even after a later commit moves `main`."""
    import huggingface_hub
    from click.testing import CliRunner

    from vdvae_zoo.cli import main

    calls = []

    def create_repo(self, repo_id, *, private=False, exist_ok=False, **kwargs):
        calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, **kwargs):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        calls.append(("upload_folder", repo_id, sorted(files)))
        oid = hub.add(repo_id, files)
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}",
            commit_message=commit_message,
            commit_description="",
            oid=oid,
        )

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    manifest = write_manifest(tmp_path / "m.json", [entry("tiny", golden_config, url="http://127.0.0.1:9/unused")])
    pinned = tmp_path / "pinned.json"
    # model.th was saved from DistributedDataParallel: every key starts with "module.".
    result = CliRunner().invoke(
        main,
        [
            "publish",
            f"tiny={TINY / 'model.th'}",
            "--org",
            "test-org",
            "--manifest",
            str(manifest),
            "--manifest-out",
            str(pinned),
        ],
    )
    assert result.exit_code == 0, result.output
    assert calls == [
        ("create_repo", "test-org/tiny", False, True),
        ("upload_folder", "test-org/tiny", ["README.md", "config.json", "model.safetensors"]),
    ]
    pin = json.loads(pinned.read_text())["models"][0]
    commit = hub.heads["test-org/tiny"]
    uploaded = hub.repos["test-org/tiny"][commit]
    assert pin["hub"] == {
        "repo_id": "test-org/tiny",
        "revision": commit,
        "filenames": ["config.json", "model.safetensors"],
        "sha256": hashlib.sha256(uploaded["model.safetensors"]).hexdigest(),
    }
    assert pin["source"]["sha256"] == sha256_file(TINY / "model.th")
    assert json.loads(result.output[result.output.index("{") :])["tiny"]["revision"] == commit

    hub.add("test-org/tiny", {"config.json": b"{}", "model.safetensors": b"not this one"})  # main moves on
    published = vdvae_zoo.load("tiny", manifest=pinned, device="cpu")
    original = vdvae_zoo.load(TINY / "model.th", config=golden_config, device="cpu")
    published_state, original_state = published.state_dict(), original.state_dict()
    assert published_state.keys() == original_state.keys()
    for name, tensor in original_state.items():
        assert torch.equal(published_state[name], tensor), name
    assert "tiny" in (hub.repos["test-org/tiny"][commit]["README.md"]).decode()
