"""A newcomer's hour, round 3: the data-loss cases, the FIFO hang and the rest of the adversarial list."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from helpers import random_images
from vdvae_zoo.cli import main
from vdvae_zoo.files import atomic_folder, atomic_write, read_small_text, staged_file


@pytest.fixture()
def model_and_images(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["new", "tiny32", "-o", str(tmp_path / "m")]).exit_code == 0
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(random_images(3, size=32, seed=4).numpy()):
        Image.fromarray(im).save(folder / f"{i}.png")
    return tmp_path / "m", folder


# ------------------------------------------------------------------------------------------- data loss
def test_encode_never_writes_through_a_planted_link(tmp_path, model_and_images):
    """A symbolic link planted at the temporary names a writer used to use (predictable: `.X.partial`,
    `.X.tmp-PID`) is never followed: the user's file behind it keeps its bytes."""
    model, images = model_and_images
    victim = tmp_path / "precious.txt"
    victim.write_text("the user's data")
    out = tmp_path / "x.npy"
    for name in (f".{out.name}.partial", f".{out.name}.tmp-{os.getpid()}", f".{out.name}.json.tmp-{os.getpid()}"):
        (tmp_path / name).symlink_to(victim)
    result = CliRunner().invoke(main, ["encode", str(model), str(images), "-o", str(out), "--flat", "2"])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "the user's data"
    assert np.load(out).shape[0] == 3


def test_staged_temporaries_are_created_exclusively(tmp_path, monkeypatch):
    """The temporary is made with O_EXCL: when its name is taken (here forced by a fixed random sequence), the
    writer picks another name or fails; it never opens what is there."""
    import tempfile
    victim = tmp_path / "victim"
    victim.write_text("keep")

    class Fixed:
        def __iter__(self):
            return self

        def __next__(self):
            return "fixed"
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: Fixed())
    target = tmp_path / "out.bin"
    (tmp_path / f".out.bin.tmp-{os.getpid()}-fixed").symlink_to(victim)
    with pytest.raises(FileExistsError):
        atomic_write(target, b"new")
    assert victim.read_text() == "keep" and not target.exists()


def test_encode_checks_every_output_before_work(tmp_path, model_and_images, monkeypatch):
    model, images = model_and_images
    out = tmp_path / "x.npy"
    side = tmp_path / "x.npy.json"
    side.write_text("mine")
    import vdvae_zoo.cli.pictures as pictures
    loaded = []
    monkeypatch.setattr(pictures, "load_model", lambda *a, **k: loaded.append(a) or pytest.fail("loaded"))
    result = CliRunner().invoke(main, ["encode", str(model), str(images), "-o", str(out), "--flat", "2"])
    assert result.exit_code != 0 and "x.npy.json exists" in result.output and "--overwrite" in result.output
    assert side.read_text() == "mine" and not out.exists() and not loaded


def test_encode_output_rule(tmp_path, model_and_images):
    """One rule: --flat writes rows instead of the per-layer tensors; --stats adds mean and std in the same form;
    an .npy holds one array (so it needs --flat and refuses --stats)."""
    from safetensors import safe_open
    model, images = model_and_images
    runner = CliRunner()

    def keys(*args):
        out = tmp_path / f"z{len(list(tmp_path.glob('z*')))}.safetensors"
        result = runner.invoke(main, ["encode", str(model), str(images), "-o", str(out), *args])
        assert result.exit_code == 0, result.output
        with safe_open(str(out), "pt") as f:
            return set(f.keys())
    per_layer = keys()
    assert per_layer and all(k.startswith("z.") for k in per_layer)
    assert keys("--stats") == per_layer | {k.replace("z.", "mean.") for k in per_layer} | \
        {k.replace("z.", "std.") for k in per_layer}
    assert keys("--flat", "3") == {"flat"}
    assert keys("--flat", "3", "--stats") == {"flat", "flat_mean", "flat_std"}
    refused = runner.invoke(main, ["encode", str(model), str(images), "-o", str(tmp_path / "a.npy"), "--flat", "3",
                                   "--stats"])
    assert refused.exit_code == 2 and "--stats" in refused.output and not (tmp_path / "a.npy").exists()


def test_a_fifo_config_is_refused_not_waited_on(tmp_path):
    """A model folder whose config.json is a FIFO used to block forever (API and CLI)."""
    assert CliRunner().invoke(main, ["new", "tiny32", "-o", str(tmp_path / "m")]).exit_code == 0
    (tmp_path / "m" / "config.json").unlink()
    os.mkfifo(tmp_path / "m" / "config.json")
    code = ("import vdvae_zoo, sys\n"
            "try:\n    vdvae_zoo.load(sys.argv[1], device='cpu')\n"
            "except ValueError as e:\n    print(e)\n")
    api = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True,
                         timeout=120)
    assert "not a regular file" in api.stdout, api.stdout + api.stderr
    cli = subprocess.run([sys.executable, "-m", "vdvae_zoo", "info", str(tmp_path / "m")], capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 1 and "not a regular file" in cli.stderr and "config.json" in cli.stderr


def test_read_small_text_refuses_what_is_not_a_file(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ValueError, match="not a regular file"):
        read_small_text(tmp_path / "pipe")
    (tmp_path / "big").write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match="more than"):
        read_small_text(tmp_path / "big", max_bytes=10)
    assert read_small_text(tmp_path / "big") == "x" * 100


def test_staged_folders_and_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "f") as staging:
            (staging / "a").write_text("x")
        with staged_file(tmp_path / "g") as tmp:
            tmp.write_text("y")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "f").st_mode & 0o777) == 0o755
    assert (os.stat(tmp_path / "g").st_mode & 0o777) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "g"]
