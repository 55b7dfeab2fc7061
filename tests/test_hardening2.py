"""Hardening, round 2 (#23): every foreseeable mistake and fault is one sentence that names the file or argument
and says what to do, with nothing half-written left; results that must not depend on how they were computed
do not."""

import errno
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import REPO, TINY, interrupt_call, tiny_config_dict
from PIL import Image
from safetensors.torch import save_file

import vdvae_zoo
from vdvae_zoo.cli import main
from vdvae_zoo.data import files as files_module
from vdvae_zoo.data.images import sample_photos


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_sentence(result, *fragments):
    """A refusal: exit status 1, one 'Error:' line holding every fragment, no traceback."""
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


@pytest.fixture()
def model_dir(tmp_path):
    torch.manual_seed(0)
    return vdvae_zoo.VDVAE(vdvae_zoo.VDVAEConfig.from_dict(tiny_config_dict())).save_pretrained(tmp_path / "m")


@pytest.fixture()
def tiny32(tmp_path):
    assert run("new", "tiny32", "-o", tmp_path / "tiny").exit_code == 0
    return tmp_path / "tiny"


# ------------------------------------------------------------------------------------- malformed checkpoints
def test_malformed_checkpoints_are_one_sentence(tmp_path, model_dir):
    empty = tmp_path / "empty.th"
    empty.write_bytes(b"")
    one_sentence(run("inspect", empty), "empty.th is empty (0 bytes)")
    for name, keys in (("ints.th", {1: torch.zeros(1)}), ("tuples.th", {("a", 1): torch.zeros(1)})):
        torch.save(keys, tmp_path / name)
        one_sentence(run("inspect", tmp_path / name), name, "is not a tensor name")
    state = torch.load(TINY / "model-ema.th", map_location="cpu", weights_only=True)
    state["decoder.gain"] = torch.ones(32)  # 1-d
    torch.save(state, tmp_path / "flat_gain.th")
    result = run("inspect", tmp_path / "flat_gain.th")
    assert result.exit_code == 0 and "decoder.gain has shape (32,)" in result.output, result.output
    save_file({"decoder.gain": torch.zeros(1, 4, 1, 1, dtype=torch.complex64)}, str(tmp_path / "complex.safetensors"))
    one_sentence(
        run("sample", tmp_path / "complex.safetensors", "--config", "tiny32", "-o", tmp_path / "s.png"),
        "complex64",
        "floating point",
    )


# ---------------------------------------------------------------------------------------- malformed configs
@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("bottleneck_multiple", "0.25", "bottleneck_multiple must be a number"),
        ("custom_width_str", 3, "custom_width_str must be text"),
        ("low_bit", 1, "low_bit must be true or false"),
        ("dec_blocks", ",".join(["32"] * 200000), "200,000 items"),
    ],
)
def test_malformed_config_files_are_one_sentence_and_quick(tmp_path, model_dir, field, value, fragment):
    config = json.loads((model_dir / "config.json").read_text())
    config[field] = value
    (model_dir / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    one_sentence(run("sample", model_dir, "-n", 1, "-o", tmp_path / "s.png"), fragment)
    assert time.perf_counter() - start < 10


def test_a_deeply_nested_config_is_one_sentence(tmp_path, model_dir):
    (model_dir / "config.json").write_text('{"a": ' * 100000 + "1" + "}" * 100000)
    one_sentence(run("sample", model_dir, "-n", 1, "-o", tmp_path / "s.png"), "nested too deeply")


def test_new_writes_a_model_whose_th_file_is_recognised(tmp_path, tiny32):
    state = vdvae_zoo.read_checkpoint(tiny32 / "model.safetensors")
    torch.save(state, tmp_path / "tiny.th")
    model = vdvae_zoo.load(tmp_path / "tiny.th", device="cpu")
    assert model.provenance.architecture == "example tiny32" and model.config.image_size == 32
    result = run("inspect", tiny32)  # a folder is accepted, like everywhere else
    assert result.exit_code == 0 and "matches exactly: example tiny32" in result.output, result.output


# -------------------------------------------------------------------------------------- eval and sample sets
def test_broken_npy_files_are_one_sentence(tmp_path, tiny32):
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00\xff\xff" + b"{'descr': '|u1', " + b"x" * 64)
    one_sentence(run("eval", tiny32, "--data", tmp_path / "bad.npy"), "bad.npy")
    np.save(tmp_path / "none.npy", np.zeros((0, 32, 32, 3), np.uint8))
    one_sentence(run("eval", tiny32, "--data", tmp_path / "none.npy"), "none.npy", "holds no images")


def test_eval_refuses_to_discard_saved_progress(tmp_path, tiny32):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8))
    (tmp_path / "ev.json.state.jsonl").write_text('{"model": "m"}\n')
    one_sentence(
        run("eval", tiny32, "--data", tmp_path / "x.npy", "-o", tmp_path / "ev.json"),
        "ev.json.state.jsonl",
        "--resume",
        "--overwrite",
    )
    assert run("eval", tiny32, "--data", tmp_path / "x.npy", "-o", tmp_path / "ev.json", "--overwrite").exit_code == 0


def test_ctrl_c_in_eval_says_what_was_kept_and_how_to_continue(tmp_path, tiny32, monkeypatch):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))
    interrupt_call(monkeypatch, vdvae_zoo.VDVAE, "likelihood", at=2)
    result = run("eval", tiny32, "--data", tmp_path / "x.npy", "--chunk", 4, "-o", tmp_path / "ev.json")
    assert result.exit_code == 130 and "Aborted!" not in result.output
    assert "ev.json.state.jsonl" in result.output and "--resume" in result.output


def test_a_sample_set_resumed_with_another_batch_size_matches_an_uninterrupted_one(tmp_path, tiny32):
    whole = tmp_path / "whole"
    assert run("sample", tiny32, "-n", 9, "--outdir", whole, "--batch-size", 4, "--seed", 2).exit_code == 0
    part = tmp_path / "part"
    assert run("sample", tiny32, "-n", 5, "--outdir", part, "--batch-size", 4, "--seed", 2).exit_code == 0
    (part / "000003.png").write_bytes((part / "000003.png").read_bytes()[:60])  # a file cut short by a crash
    resumed = run("sample", tiny32, "-n", 9, "--outdir", part, "--batch-size", 3, "--seed", 2, "--resume")
    assert resumed.exit_code == 0 and "pass size 4" in resumed.output, resumed.output
    assert "wrote 5 PNGs" in resumed.output  # 000003 (cut short) and 000005..000008
    for i in range(9):
        assert (part / f"{i:06d}.png").read_bytes() == (whole / f"{i:06d}.png").read_bytes(), i
    (part / "samples.json").write_text("[1, 2, 3]")
    one_sentence(run("sample", tiny32, "-n", 9, "--outdir", part, "--resume"), "samples.json", "sample set")


# ---------------------------------------------------------------------------------------------------- faults
@pytest.mark.slow  # several seconds (processes, training, long chains): the quick run skips it
def test_a_download_cut_short_is_retried_then_one_sentence(hf_home, hub, golden_files, tmp_path):
    hub.add("test-org/cut", golden_files)
    hub.server.truncate_to = 100
    start = time.perf_counter()
    one_sentence(run("sample", "test-org/cut", "-n", 1, "-o", tmp_path / "s.png"), "test-org/cut", "try again")
    assert time.perf_counter() - start < 30
    assert len([r for r in hub.server.requests if r.endswith("model.safetensors")]) <= 4
    locks = list((hf_home / "hub" / ".locks").rglob("*.lock")) if (hf_home / "hub" / ".locks").is_dir() else []
    assert not locks, locks  # no empty lock files left behind


def test_a_mistyped_path_fails_at_once_when_the_hub_cannot_be_reached(tmp_path, monkeypatch, hf_home):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    for name in ("runs/faces", "x" * 5000):
        start = time.perf_counter()
        one_sentence(run("sample", name, "-o", tmp_path / "s.png"))
        assert time.perf_counter() - start < 5


def test_full_disk_and_read_only_folders_are_one_sentence_and_leave_nothing(tmp_path, model_dir, monkeypatch):
    import safetensors.torch

    def full(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")
        raise Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    one_sentence(run("new", "tiny32", "-o", tmp_path / "new"), "no space left")
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new*"))

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(files_module, "atomic_write", read_only)
    monkeypatch.setattr(vdvae_zoo.cli.pictures, "save_png", lambda image, path, **k: read_only(path))
    one_sentence(run("sample", model_dir, "-n", 1, "-o", tmp_path / "s.png"), "s.png", "HF_HOME")


def test_two_writers_of_one_output_never_replace_each_other(tmp_path):
    target = tmp_path / "same.png"

    def meanwhile(tmp):
        tmp.write_bytes(b"mine")
        target.write_bytes(b"theirs")  # another process finished first

    with pytest.raises(FileExistsError, match="another process wrote it"):
        files_module.atomic_write(target, meanwhile, overwrite=False)
    assert target.read_bytes() == b"theirs" and not list(tmp_path.glob(".same.png*"))


def test_a_file_name_that_is_not_utf8_keeps_its_row(tmp_path, model_dir):
    folder = tmp_path / "imgs"
    folder.mkdir()
    photo = Image.fromarray(sample_photos(1, 16)[0])
    photo.save(folder / "ok.png")
    photo.save(os.fsdecode(bytes(folder) + b"/caf\xe9.png"))
    result = run("bpd", folder, "--model", model_dir, "-o", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert len(rows) == 3 and any("caf\\xe9.png" in r for r in rows)


# -------------------------------------------------------------------------------------------------- training
@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, im in enumerate(vdvae_zoo.data.images.photo_crops(24, 16, seed=3)):
        Image.fromarray(im).save(folder / f"{i:02d}.png")
    return folder


def train(tmp_path, photos, *extra):
    (tmp_path / "c.json").write_text(json.dumps(tiny_config_dict()))
    return run(
        "finetune",
        "--config",
        tmp_path / "c.json",
        "--data",
        photos,
        "--out",
        tmp_path / "run",
        "--device",
        "cpu",
        "--val-every",
        0,
        "--sample-every",
        0,
        *extra,
    )


def test_diverging_weights_stop_the_run_with_a_message(tmp_path, photos):
    result = train(tmp_path, photos, "--steps", 5, "--lr", "1e30", "--save-every", 0)
    assert result.exit_code == 1 and "non-finite" in result.output and "--lr" in result.output, result.output


def test_a_refused_option_writes_nothing(tmp_path, photos):
    result = train(tmp_path, photos, "--steps", 2, "--ema-rate", 1.5)
    assert result.exit_code != 0 and "--ema-rate" in result.output
    assert not (tmp_path / "run").exists()
    assert train(tmp_path, photos, "--steps", 2).exit_code == 0


@pytest.mark.slow  # several seconds (processes, training, long chains): the quick run skips it
def test_the_run_folder_is_safe_and_its_card_knows_the_run(tmp_path, photos):
    assert train(tmp_path, photos, "--steps", 4, "--val-every", 2, "--val-fraction", 0.25).exit_code == 0
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "trained from scratch" in card and "4 iterations" in card and "validation bits per dim: " in card
    assert "from " + str(tmp_path / "photos") in card
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all("loss" not in r for r in log) and any("loss_bpd" in r for r in log)  # bits per dim, named so
    # a crash between the two renames of model/: loading the run puts the previous folder back
    os.replace(tmp_path / "run" / "model", tmp_path / "run" / ".model.old-99999")
    assert vdvae_zoo.load(tmp_path / "run", device="cpu").config.image_size == 16
    # a symbolic link as log.jsonl is refused, never followed
    outside = tmp_path / "outside.txt"
    outside.write_text("")
    (tmp_path / "run" / "log.jsonl").unlink()
    (tmp_path / "run" / "log.jsonl").symlink_to(outside)
    result = train(tmp_path, photos, "--steps", 6, "--val-every", 2, "--val-fraction", 0.25, "--resume")
    assert result.exit_code == 1 and "symbolic link" in result.output and outside.read_text() == ""


def test_a_truncated_checkpoint_is_one_sentence(tmp_path, photos):
    assert train(tmp_path, photos, "--steps", 2).exit_code == 0
    state = tmp_path / "run" / "checkpoint" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:1000])
    one_sentence(train(tmp_path, photos, "--steps", 4, "--resume"), "checkpoint", "cannot be read")


# ----------------------------------------------------------------------------------------------- torch.hub
def test_torch_hub_loads_a_model_from_a_local_clone(model_dir):
    model = torch.hub.load(str(REPO), "vdvae", source="local", name=str(model_dir), device="cpu")
    assert isinstance(model, vdvae_zoo.VDVAE) and model.provenance.kind == "folder"


def test_running_out_of_gpu_memory_is_one_sentence_with_the_way_out(tmp_path, model_dir, monkeypatch):
    model = vdvae_zoo.load(model_dir, device="cpu")

    sizes = []

    def out_of_memory(activations, target, n, *args, **kwargs):
        sizes.append(n)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB")

    monkeypatch.setattr(model, "_terms", out_of_memory)
    # halved down to one image per pass (tests/test_memory.py), then one sentence with the ways out
    with pytest.raises(
        MemoryError,
        match=r"the cpu ran out of memory with even one image per pass: free memory "
        r"\(other processes\), use --dtype bfloat16, or a device with more memory",
    ):
        model.likelihood(np.zeros((3, 16, 16, 3), np.uint8), seeds=[1, 2, 3])
    assert sizes == [8, 4, 2, 1]


def test_ctrl_c_in_a_sample_set_says_what_was_kept_and_how_to_continue(tmp_path, tiny32, monkeypatch):
    interrupt_call(monkeypatch, vdvae_zoo.VDVAE, "sample", at=2)
    result = run("sample", tiny32, "-n", 6, "--outdir", tmp_path / "set", "--batch-size", 3)
    assert result.exit_code == 130 and "Aborted!" not in result.output and "--resume" in result.output
    assert sorted(p.name for p in (tmp_path / "set").glob("*.png")) == ["000000.png", "000001.png", "000002.png"]


@pytest.mark.slow  # a trainer run with DataLoader workers
def test_training_data_deleted_under_the_workers_is_one_sentence(tmp_path, photos, monkeypatch):
    from vdvae_zoo.training.trainer import Trainer

    original = Trainer.train_step

    def deleting(self):
        if self.step == 2:
            for f in photos.glob("*.png"):
                f.unlink()
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", deleting)
    result = train(tmp_path, photos, "--steps", 40, "--workers", 1, "--batch-size", 4, "--val-fraction", 0)
    one_sentence(result, "DataLoader worker", "no training image can be read", "--resume")


def test_the_trainer_writes_enlarged_sample_grids(tmp_path, photos):
    assert train(tmp_path, photos, "--steps", 2, "--sample-every", 2).exit_code == 0
    grid = Image.open(tmp_path / "run" / "samples" / "step_0000002.png")
    assert grid.size[0] > 4 * 18  # 16x16 samples shown larger than life, as the CLI's grids


def test_a_config_without_its_architecture_names_what_is_missing():
    with pytest.raises(ValueError, match="a config needs image_size, width, enc_blocks, dec_blocks"):
        vdvae_zoo.VDVAEConfig.from_dict({"zdim": 8})
