"""Hardening, round 4 (#35): each FAIL of the hostile run, as a test that failed before its fix. The classes are
closed where they are born (data/files.open_user_file, cli/params.py, weights/cards.py, cli/base.refuse_outputs);
tests/test_cli_generated.py walks every command with bad values besides these cases."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import image_folder

from vdvae_zoo.cli import main

#: A bound that a slow, busy machine meets (a FIFO that is waited on never ends: the bound is what fails it).
BOUND_S = 120


@pytest.fixture()
def model_and_images(tmp_path):
    assert CliRunner().invoke(main, ["new", "tiny32", "-o", str(tmp_path / "m")]).exit_code == 0
    return tmp_path / "m", image_folder(tmp_path / "imgs", 6, size=32, seed=4)


def cli(*args, cwd=None):
    """`vdvae-zoo ARGS` in its own process, bounded; (exit code, stdout + stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "vdvae_zoo", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=BOUND_S,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
    return proc.returncode, proc.stdout + proc.stderr


def one_sentence(code, output):
    assert code != 0 and "Traceback" not in output, output
    return output


# ------------------------------------------------------------------------------------------- hangs on a FIFO
def test_readers_refuse_a_fifo_instead_of_waiting_on_it(tmp_path, model_and_images):
    model, images = model_and_images
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for name in ("x.vdz", "x.png"):
        os.symlink(fifo, tmp_path / name)
    out = one_sentence(*cli("decompress", tmp_path / "x.vdz", "-o", tmp_path / "out"))
    assert "FIFO" in out and "x.vdz" in out
    out = one_sentence(*cli("restore", model, tmp_path / "x.png", "--denoise", "5", "-o", tmp_path / "r.png"))
    assert "FIFO" in out and "x.png" in out
    # eval --resume whose state file is a FIFO
    os.mkfifo(tmp_path / "e.json.state.jsonl")
    out = one_sentence(*cli("eval", model, "--data", images, "-o", tmp_path / "e.json", "--resume"))
    assert "FIFO" in out and "state.jsonl" in out


def test_devices_are_refused_without_reading_them(tmp_path, model_and_images):
    model, _ = model_and_images
    out = one_sentence(*cli("decompress", "/dev/zero", "-o", tmp_path / "out"))
    assert "/dev/zero" in out and "device" in out and "MemoryError" not in out
    out = one_sentence(*cli("bpd", "/dev/zero", "--model", model))
    assert "/dev/zero" in out and "device" in out and "does not exist" not in out


# ------------------------------------------------------------------------------ numbers refused when parsed
@pytest.mark.parametrize(
    "args, says",
    [
        (["restore", "{model}", "{image}", "--denoise", "nan", "-o", "{out}"], "not a finite number"),
        (["restore", "{model}", "{image}", "--denoise", "1e308", "-o", "{out}"], "not in the range"),
        (["restore", "{model}", "{image}", "--denoise", "5", "--samples", "1000000000", "-o", "{out}"], "range"),
        (["restore", "{model}", "{image}", "--denoise", "5", "--coupling", "nan", "-o", "{out}"], "--coupling"),
        (["compress", "{model}", "{image}", "--grid", "2^5000:24", "-o", "{out}"], "--grid"),
        (["finetune", "--data", "{images}", "--out", "{out}", "--config", "tiny32", "--free-bits", "1e308"], "range"),
        (["sample", "{model}", "-n", "2", "-t", "inf", "-o", "{out}"], "finite"),
        (["bpd", "{images}", "--model", "{model}", "--seed", "-1"], "--seed"),
    ],
)
def test_bad_numbers_are_one_sentence_and_write_nothing(tmp_path, model_and_images, args, says):
    model, images = model_and_images
    subst = {"{model}": model, "{images}": images, "{image}": images / "00.png", "{out}": tmp_path / "out.png"}
    result = CliRunner().invoke(main, [str(subst.get(a, a)) for a in args])
    assert result.exit_code == 2 and says in result.output, result.output
    assert "temperature" not in result.output or "-t" in args  # --coupling nan is not a temperature problem
    assert not (tmp_path / "out.png").exists()


# --------------------------------------------------------------------------------- dependencies, one sentence
def test_wandb_without_a_login_says_what_to_do(tmp_path, model_and_images, monkeypatch):
    pytest.importorskip("wandb")
    _, images = model_and_images
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    code, out = cli(
        "finetune", "--data", images, "--out", tmp_path / "run", "--config", "tiny32", "--steps", "1",
        "--batch-size", "2", "--val-every", "0", "--sample-every", "0", "--log-to", "wandb", cwd=tmp_path,
    )  # fmt: skip
    one_sentence(code, out)
    assert "wandb login" in out and "WANDB_MODE=offline" in out


def test_a_damaged_archive_is_said_as_damaged(tmp_path, model_and_images):
    pytest.importorskip("constriction")
    from vdvae_zoo.coding import header as H

    model, images = model_and_images
    assert CliRunner().invoke(main, ["compress", str(model), str(images), "-o", str(tmp_path / "a.vdz")]).exit_code == 0
    header, payload = H.read_header((tmp_path / "a.vdz").read_bytes())
    crcs = np.array(header.pop("crc32"), dtype="<u4").tobytes()
    header["names"], header["stored"] = None, [[k, v] for k, v in header["stored"].items()]
    header.pop("format")
    header["grid"] = float("nan")
    (tmp_path / "nan.vdz").write_bytes(H.pack(header, crcs + payload))
    result = CliRunner().invoke(main, ["decompress", str(tmp_path / "nan.vdz"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "damaged" in result.output and "version" not in result.output, result.output


def test_a_full_disk_names_the_file_being_written(tmp_path, model_and_images, monkeypatch):
    from PIL import Image

    model, _ = model_and_images

    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    result = CliRunner().invoke(main, ["sample", str(model), "-n", "2", "-o", str(tmp_path / "grid.png")])
    assert result.exit_code == 1 and "no space left" in result.output and "grid.png" in result.output, result.output
    assert "see the command's output" not in result.output and not (tmp_path / "grid.png").exists()


def test_a_config_that_is_not_utf8_names_the_file(tmp_path, model_and_images):
    model, _ = model_and_images
    (model / "config.json").write_bytes(b'{"width": "\xff"}')
    result = CliRunner().invoke(main, ["info", str(model)])
    assert result.exit_code == 1 and "config.json" in result.output and "UTF-8" in result.output, result.output


def test_info_of_a_run_whose_options_are_null(tmp_path, model_and_images):
    _, images = model_and_images
    runner = CliRunner()
    args = ["finetune", "--data", str(images), "--out", str(tmp_path / "run"), "--config", "tiny32", "--steps", "1"]
    finished = runner.invoke(main, args + ["--batch-size", "2", "--val-every", "0", "--sample-every", "0"])
    assert finished.exit_code == 0, finished.output
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    (tmp_path / "run" / "run.json").write_text(json.dumps(dict(record, options=None)))
    result = runner.invoke(main, ["info", str(tmp_path / "run")])
    assert result.exit_code == 0 and "run:" in result.output and result.exception is None, result.output


# ----------------------------------------------------------------------------- resume refuses what it can't trust
@pytest.fixture()
def saved_run(tmp_path, model_and_images):
    _, images = model_and_images
    from vdvae_zoo.training.trainer import Trainer, TrainOptions

    options = dict(data=str(images), out=str(tmp_path / "run"), config="tiny32", steps=2, batch_size=2,
                   val_every=0, sample_every=0, warmup=0)  # fmt: skip
    Trainer(TrainOptions(**options)).train()
    return tmp_path / "run" / "checkpoint" / "state.safetensors", options


@pytest.mark.parametrize(
    "damage, says",
    [
        ("reshape", "has shape"),
        ("drop_optimizer", "is missing"),
        ("nan_ema", "NaN"),
    ],
)
def test_resume_refuses_a_checkpoint_it_cannot_trust(saved_run, damage, says):
    from safetensors.torch import load_file, save_file

    from vdvae_zoo.training.trainer import Trainer, TrainOptions

    path, options = saved_run
    tensors = load_file(str(path))
    if damage == "reshape":
        name = next(k for k in tensors if k.startswith("optim.") and k.endswith("exp_avg"))
        tensors[name] = torch.zeros(tensors[name].numel() + 1)
    elif damage == "drop_optimizer":
        tensors = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
    else:
        name = next(k for k in tensors if k.startswith("ema."))
        tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(path))
    trainer = Trainer(TrainOptions(**dict(options, steps=4, resume=True)))
    with pytest.raises(ValueError, match=f"cannot be trusted: .*{says}") as info:
        trainer.train()
    assert "state.safetensors" not in str(info.value) or "checkpoint" in str(info.value)
    assert "checkpoint" in str(info.value) and "--out" in str(info.value)


# ---------------------------------------------------------------------------------------------- restore
def test_restore_never_replaces_its_input(tmp_path, model_and_images):
    model, images = model_and_images
    target = images / "00.png"
    before = target.read_bytes()
    args = ["restore", str(model), str(target), "--denoise", "5", "-o", str(target), "--overwrite", "--steps", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "one of the images" in result.output and target.read_bytes() == before


def test_restore_that_runs_out_of_memory_is_one_sentence(tmp_path, model_and_images, monkeypatch):
    import importlib

    restoration = importlib.import_module("vdvae_zoo.restore")  # the module (vdvae_zoo.restore is also the function)
    model, images = model_and_images

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(restoration, "_latent_step", out_of_memory)
    args = ["restore", str(model), str(images / "00.png"), "--denoise", "5", "-o", str(tmp_path / "r.png")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "ran out of memory with even one image" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# ------------------------------------------------------------------------------------------------ signals
TRAIN_SCRIPT = """
import sys
from vdvae_zoo.training.trainer import Trainer, TrainOptions
trainer = Trainer(TrainOptions(data=sys.argv[1], out=sys.argv[2], config="tiny32", steps=100000, batch_size=2,
                               val_every=0, sample_every=0, save_every=0, log_every=1))
trainer.train()
print("train() returned")
"""


def _wait_for_steps(log, steps, proc):
    deadline = time.time() + BOUND_S
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and sum(1 for line in log.read_text().splitlines() if '"step"' in line) >= steps:
            return
        time.sleep(0.2)
    raise AssertionError(f"the run did not reach step {steps}: {proc.communicate(timeout=BOUND_S)}")


@pytest.mark.slow  # starts a training process
def test_a_library_run_passes_sigterm_on_after_saving(tmp_path, model_and_images):
    """The trainer's handler never swallows a signal: after the checkpoint, SIGTERM ends the process, as it would
    have without the trainer (a test runner that sends it sees its process end)."""
    _, images = model_and_images
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, str(images), str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for_steps(tmp_path / "run" / "log.jsonl", 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=BOUND_S)
    assert proc.returncode == -signal.SIGTERM, (out, err)
    assert "train() returned" not in out and (tmp_path / "run" / "checkpoint" / "state.safetensors").is_file()


SLOW_STEP_SCRIPT = """
import sys, time
from vdvae_zoo.training import trainer as T
original = T.Trainer.train_step
def step(self):
    record = original(self)
    if self.step >= 3:
        time.sleep(3600)  # a step that takes an hour (imagenet64 on a CPU: minutes)
    return record
T.Trainer.train_step = step
from vdvae_zoo.cli import main
main(sys.argv[1:], prog_name="vdvae-zoo")
"""


@pytest.mark.slow  # starts a training process
def test_a_second_signal_stops_at_once_and_keeps_the_last_checkpoint(tmp_path, model_and_images):
    """#36: the first Ctrl-C waits for the step in progress (here: an hour); the second exits at once, and the
    checkpoint saved before stays."""
    _, images = model_and_images
    args = ["finetune", "--data", images, "--out", tmp_path / "run", "--config", "tiny32", "--steps", "100000",
            "--batch-size", "2", "--val-every", "0", "--sample-every", "0", "--save-every", "2",
            "--log-every", "1"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", SLOW_STEP_SCRIPT, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for_steps(tmp_path / "run" / "log.jsonl", 2, proc)
    time.sleep(1.0)  # inside step 3's hour
    proc.send_signal(signal.SIGINT)
    time.sleep(2.0)
    assert proc.poll() is None  # the first signal waits for the step
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=BOUND_S)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "stopping after this step" in err and "--resume" in err
    meta = json.loads((tmp_path / "run" / "checkpoint" / "meta.json").read_text())
    assert meta["step"] == 2
