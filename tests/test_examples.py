"""Every script in examples/ runs end to end on a random-init tiny model (--tiny) and writes what it says."""

import json
import subprocess
import sys

import pytest
from helpers import REPO
from PIL import Image

from vdvae_zoo.data.images import sample_photos

EXAMPLES = REPO / "examples"


def run(script, *args, cwd):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow  # several seconds (processes, training, long chains): the quick run skips it
def test_sample_grid(tmp_path):
    out = run("sample_grid.py", "--tiny", "-n", 4, "-t", 1.0, 0.5, "-o", tmp_path / "g.png", cwd=tmp_path)
    assert "wrote" in out and Image.open(tmp_path / "g.png").size == (4 * 34 + 2, 2 * 34 + 2)


@pytest.mark.slow  # several seconds (processes, training, long chains): the quick run skips it
def test_bpd_folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    astronaut, _, coffee = sample_photos(3)
    Image.fromarray(astronaut).save(folder / "a.png")
    Image.fromarray(coffee).save(folder / "b.jpg")
    out = run("bpd_folder.py", "--tiny", folder, "--samples", 3, "--chart", tmp_path / "c.png", cwd=tmp_path)
    assert "2 images: bpd" in out and "importance-weighted bound with 3 samples" in out
    assert Image.open(tmp_path / "c.png").size == (900, 420)


@pytest.mark.slow  # several seconds (processes, training, long chains): the quick run skips it
def test_reconstruction_and_interpolation(tmp_path):
    out = run("reconstruction.py", "--tiny", "--keep", 1, 4, "all", "-o", tmp_path / "r.png", cwd=tmp_path)
    assert "keep 1, 4, 13 of 13 layers" in out
    assert Image.open(tmp_path / "r.png").size == (4 * 34 + 2, 3 * 34 + 2)
    out = run("interpolation.py", "--tiny", "--steps", 5, "--keep", 3, "all", "-o", tmp_path / "i.png", cwd=tmp_path)
    assert Image.open(tmp_path / "i.png").size == (5 * 34 + 2, 2 * 34 + 2)


@pytest.mark.slow  # several seconds (processes, training, long chains): the quick run skips it
def test_make_guide(tmp_path):
    run("make_guide.py", "--tiny", "--out", tmp_path / "guide", "--samples", 2, cwd=tmp_path)
    names = {p.name for p in (tmp_path / "guide").iterdir()}
    assert names == {
        "samples_by_temperature.png",
        "reconstructions.png",
        "interpolation.png",
        "bits_per_layer.png",
        "summary.json",
    }
    summary = json.loads((tmp_path / "guide" / "summary.json").read_text())
    assert summary["reconstruction_keep"] == [1, 4, 13] and summary["bpd_iw"] > 0
    # The chart's bits per resolution add up to the rate the likelihood reports (bits per dim x 32*32*3 dims).
    total_bits = sum(summary["bits_per_resolution"].values())
    assert abs(total_bits - summary["rate_bpd"] * 32 * 32 * 3) <= 1e-3 * max(total_bits, 1.0)
    assert abs(summary["bpd"] - summary["distortion_bpd"] - summary["rate_bpd"]) < 1e-4


@pytest.mark.parametrize(
    "script", ["sample_grid.py", "bpd_folder.py", "reconstruction.py", "interpolation.py", "make_guide.py"]
)
@pytest.mark.slow  # several seconds (processes, training, long chains): the quick run skips it
def test_by_released_name_fails_cleanly_offline(tmp_path, script, monkeypatch):
    # By name the scripts load through the manifest; offline that is one clear message, not a traceback.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "cifar10"], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert proc.returncode != 0
    assert "vdvae-zoo download cifar10" in proc.stderr and "Traceback" not in proc.stderr
