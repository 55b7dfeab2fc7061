"""The trainer on tiny configs and real photo crops (scikit-image's bundled images)."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import entry, tiny_config_dict, write_manifest
from PIL import Image
from safetensors.torch import load_file

import vdvae_zoo
from vdvae_zoo.data.images import sample_photos
from vdvae_zoo.training.trainer import Trainer, TrainOptions


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """24 real 16x16 crops from scikit-image's bundled photos."""
    folder = tmp_path_factory.mktemp("photos")
    k = 0
    for img in sample_photos(4):
        h, w = img.shape[:2]
        for i in range(6):
            y, x = (i * 37) % (h - 96), (i * 53) % (w - 96)
            crop = Image.fromarray(img[y : y + 96, x : x + 96]).resize((16, 16), Image.BICUBIC)
            crop.save(folder / f"img{k:02d}.png")
            k += 1
    return folder


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps(tiny_config_dict()))
    return str(path)


def options(photo_dir, config_file, out, **kw):
    base = dict(
        data=str(photo_dir),
        out=str(out),
        config=config_file,
        steps=6,
        batch_size=4,
        lr=2e-3,
        warmup=2,
        val_every=0,
        save_every=0,
        sample_every=0,
        log_every=1,
        seed=0,
    )
    base.update(kw)
    return TrainOptions(**base)


def weights(path):
    return load_file(str(path / "model" / "model.safetensors"))  # the run exports its EMA weights to OUT/model


@pytest.mark.slow  # several seconds (processes, training, long chains): the quick run skips it
def test_loss_drops_and_output_loads(tmp_path, photo_dir, config_file):
    out = tmp_path / "run"
    summary = Trainer(options(photo_dir, config_file, out, steps=40, val_every=20, sample_every=40)).train()
    assert summary["step"] == 40 and summary["skipped"] == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss_bpd"] for r in records if "loss_bpd" in r]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses
    vals = [r["val_bpd"] for r in records if "val_bpd" in r]
    assert len(vals) == 2 and all(np.isfinite(vals))
    for key in ("step", "loss_bpd", "distortion_bpd", "rate_bpd", "grad_norm", "skipped", "lr", "images_per_s"):
        assert key in records[0]
    assert records[0]["lr"] == pytest.approx(1e-3)  # warm-up: (0 + 1) / 2 of lr, never 0
    assert (out / "samples" / "step_0000040.png").is_file() and (out / "curves.png").is_file()
    model = vdvae_zoo.load(out, device="cpu")
    assert model.sample(2).shape == (2, 16, 16, 3)


def test_gradient_spike_and_nan_are_skipped_and_counted(tmp_path, photo_dir, config_file, monkeypatch):
    trainer = Trainer(options(photo_dir, config_file, tmp_path / "run", steps=4, skip_threshold=1e9, skip_alarm=2))
    original = trainer.net.forward
    calls = {"n": 0}

    def faulty(images, noise=None):
        out = original(images, noise=noise)
        calls["n"] += 1
        if calls["n"] == 2:  # a gradient spike
            out = dict(out, neg_elbo=out["neg_elbo"] * 1e12)
        if calls["n"] == 3:  # a NaN loss
            out = dict(out, neg_elbo=out["neg_elbo"] * float("nan"), distortion=out["distortion"] * float("nan"))
        return out

    monkeypatch.setattr(trainer.net, "forward", faulty)
    trainer.opt.skip_threshold = 1e6
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.train()
    assert summary == dict(summary, step=4, updates=2, skipped=2)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records if "loss_bpd" in r] == [False, True, True, False]
    assert records[2]["nan_total"] == 1 and "warning" in records[2] and "skip" in records[2]["warning"]
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_resume_gives_the_same_weights(tmp_path, photo_dir, config_file):
    full = tmp_path / "full"
    Trainer(options(photo_dir, config_file, full, steps=6, hflip=True)).train()
    half = tmp_path / "half"
    Trainer(options(photo_dir, config_file, half, steps=3, hflip=True)).train()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(options(photo_dir, config_file, half, steps=6, hflip=True)).train()
    Trainer(options(photo_dir, config_file, half, steps=6, hflip=True, resume=True)).train()
    a, b = weights(full), weights(half)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt = load_file(str(half / "checkpoint" / "state.safetensors"))
    assert any(k.startswith("optim.") for k in ckpt)


def test_too_few_images_is_a_clear_error(tmp_path, config_file):
    folder = tmp_path / "few"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "a.png")
    with pytest.raises(ValueError, match="1 usable training images"):
        Trainer(options(folder, config_file, tmp_path / "run", val_fraction=0.0))


def _cli(*args, env=None, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "vdvae_zoo", "finetune", *map(str, args)],
        env=env or os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.slow  # subprocesses; about 10-30 s each (README: the quick run skips these)
def test_sigterm_saves_and_resume_finishes_identically(tmp_path, photo_dir, config_file):
    common = [
        "--config",
        config_file,
        "--data",
        photo_dir,
        "--batch-size",
        4,
        "--lr",
        2e-3,
        "--warmup",
        2,
        "--val-every",
        0,
        "--save-every",
        0,
        "--sample-every",
        0,
        "--log-every",
        1,
        "--device",
        "cpu",
    ]
    reference = tmp_path / "ref"
    p = _cli(*common, "--out", reference, "--steps", 30)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    out = tmp_path / "run"
    p = _cli(*common, "--out", out, "--steps", 30)
    deadline = time.time() + 120
    while time.time() < deadline and not (
        (out / "log.jsonl").exists() and len((out / "log.jsonl").read_text().splitlines()) >= 3
    ):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 128 + signal.SIGTERM, p.stderr.read()  # 143, the convention
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert 3 <= meta["step"] < 30
    p = _cli(*common, "--out", out, "--steps", 30, "--resume")
    assert p.wait(timeout=300) == 0, p.stderr.read()
    assert f"resumed from step {meta['step']} of 30" in p.stderr.read()
    assert p.stdout.read().startswith("done: 30 steps")
    a, b = weights(reference), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # subprocesses; about 10-30 s each (README: the quick run skips these)
def test_two_gloo_processes_match_one_process(tmp_path, photo_dir, config_file):
    common = [
        "--config",
        config_file,
        "--data",
        photo_dir,
        "--lr",
        2e-3,
        "--warmup",
        2,
        "--steps",
        4,
        "--val-every",
        0,
        "--save-every",
        0,
        "--sample-every",
        0,
        "--log-every",
        1,
        "--device",
        "cpu",
    ]
    single = tmp_path / "single"
    p = _cli(*common, "--batch-size", 4, "--out", single)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    multi = tmp_path / "multi"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for _attempt in range(2):
        shutil.rmtree(multi, ignore_errors=True)
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                "2",
                "-m",
                "vdvae_zoo",
                "finetune",
                *map(str, common),
                "--batch-size",
                "2",
                "--out",
                str(multi),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        # One retry, only when the local rendezvous itself failed (a port taken between being chosen and bound).
        if p.returncode == 0 or not re.search(
            r"Address already in use|EADDRINUSE|Connection (reset|refused)"
            r"|RendezvousConnectionError|RendezvousTimeoutError",
            p.stderr,
        ):
            break
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("done: 4 steps") == 1 and p.stderr.count("training from scratch") == 1  # one speaks
    log = (multi / "log.jsonl").read_text()
    end = [json.loads(line) for line in log.splitlines() if '"event": "end"' in line]
    assert end and end[-1]["ranks_identical"] is True, log[-2000:]
    a, b = weights(single), weights(multi)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_workers_read_the_same_batches_ahead(tmp_path, photo_dir, config_file):
    plain = Trainer(options(photo_dir, config_file, tmp_path / "a", hflip=True))
    ahead = Trainer(options(photo_dir, config_file, tmp_path / "b", hflip=True, workers=2))
    try:
        for step in (0, 1, 2, 7, 8):  # 7: a jump (as after a resume) rebuilds the loader at that step
            assert torch.equal(plain.data.batch(step), ahead.data.batch(step)), step
        first = ahead.data._loader
        ahead.data.batch(9)
        assert ahead.data._loader is first  # consecutive steps reuse one DataLoader
    finally:
        ahead.data.close()


@pytest.mark.slow  # several seconds (processes, training, long chains): the quick run skips it
def test_bf16_autocast_training_runs_and_learns(tmp_path, photo_dir, config_file):
    out = tmp_path / "bf16"
    summary = Trainer(options(photo_dir, config_file, out, steps=30, dtype="bfloat16")).train()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"loss_bpd"' in line]
    losses = [r["loss_bpd"] for r in records]
    assert summary["skipped"] == 0 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert all(t.dtype == torch.float32 for t in weights(out).values())  # master weights stay float32


@pytest.fixture()
def golden_config(golden_config_dict):
    return golden_config_dict


def test_finetune_by_name_starts_from_the_released_ema_weights(
    tmp_path, hf_home, hub, golden_files, golden_config, golden_model
):
    from PIL import Image

    from vdvae_zoo.data.images import sample_photos
    from vdvae_zoo.training.options import TRAINING_PRESETS
    from vdvae_zoo.training.trainer import Trainer, TrainOptions

    commit = hub.add("test-org/tiny32", golden_files)
    sha = hashlib.sha256(golden_files["model.safetensors"]).hexdigest()
    manifest = write_manifest(tmp_path / "m.json", [entry("tiny-released", golden_config, revision=commit, sha256=sha)])
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, img in enumerate(sample_photos(5, 32)):
        Image.fromarray(img).save(photos / f"{i}.png")
    trainer = Trainer(
        TrainOptions(
            data=str(photos),
            out=str(tmp_path / "run"),
            model="tiny-released",
            manifest=str(manifest),
            steps=2,
            batch_size=2,
            val_fraction=0.2,
            val_every=0,
            save_every=0,
            sample_every=0,
            device="cpu",
        )
    )
    released = golden_model.state_dict()
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, released[name]), name
        assert torch.equal(trainer.ema.state_dict()[name], released[name]), name
    assert trainer.opt.lr == TRAINING_PRESETS["cifar10"]["lr"]  # the manifest entry's preset gives the defaults
    assert trainer.opt.ema_rate == TRAINING_PRESETS["cifar10"]["ema_rate"]
    assert trainer.train()["step"] == 2
    assert vdvae_zoo.load(tmp_path / "run", device="cpu").config.to_dict() == golden_model.config.to_dict()


def test_the_finetune_command_options_are_the_train_options():
    import dataclasses

    from vdvae_zoo.cli import main

    params = {p.name: p for p in main.commands["finetune"].params if p.name != "as_json"}  # --json: output only
    fields = {f.name: f for f in dataclasses.fields(TrainOptions)}
    assert set(params) == set(fields)
    for name, f in fields.items():
        assert params[name].default == f.default, name
        assert params[name].help == f.metadata["help"], name
        assert params[name].required == bool(f.metadata.get("required")), name
    with pytest.raises(TypeError, match="needs data= and out="):
        TrainOptions()


# ------------------------------------------------------------------------------- issue 16: the run folder
def test_out_may_not_be_the_folder_the_model_is_read_from(tmp_path, photo_dir, tiny_model):
    source = tiny_model.save_pretrained(tmp_path / "X")
    before = (source / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="is where --model .* is read from"):
        Trainer(TrainOptions(data=str(photo_dir), out=str(source), model=str(source), device="cpu"))
    assert (source / "model.safetensors").read_bytes() == before


def test_out_may_sit_beside_a_model_file(tmp_path, photo_dir, tiny_model, monkeypatch):
    tiny_model.save_pretrained(tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")  # fine-tuning model.safetensors of the current folder
    trainer = Trainer(TrainOptions(data=str(photo_dir), out="runs/x", model="model.safetensors", device="cpu"))
    assert str(trainer.run.path) == "runs/x"  # a folder beside the file is fine
    with pytest.raises(ValueError, match="is where --model"):
        Trainer(TrainOptions(data=str(photo_dir), out=".", model="model.safetensors", device="cpu"))


def test_out_must_be_ours_or_empty_and_a_run_needs_resume(tmp_path, photo_dir, config_file):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty and holds no run of ours"):
        Trainer(options(photo_dir, config_file, mine))
    run = tmp_path / "run"
    Trainer(options(photo_dir, config_file, run, steps=2)).train()
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        Trainer(options(photo_dir, config_file, run, steps=2))
    assert (mine / "thesis.txt").read_text() == "precious"


def test_out_is_checked_writable_before_training(tmp_path, photo_dir, config_file):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(PermissionError, match="cannot write to --out"):
        Trainer(options(photo_dir, config_file, tmp_path / "a_file" / "run"))


def test_two_trainers_cannot_share_a_run_folder(tmp_path):
    from vdvae_zoo.training.run_folder import RunFolder, RunFolderInUse

    first = RunFolder(tmp_path / "run")
    first.prepare(resume=False, source=None, start={})
    with pytest.raises(RunFolderInUse, match="another trainer is using"):
        RunFolder(tmp_path / "run").prepare(resume=True, source=None, start={})
    first.release()
    RunFolder(tmp_path / "run").prepare(resume=True, source=None, start={})  # free again


@pytest.mark.parametrize(
    "option,value",
    [
        ("grad_clip", -1.0),
        ("lr", float("inf")),
        ("weight_decay", float("nan")),
        ("skip_threshold", float("nan")),
        ("ema_rate", 1.0),
    ],
)
def test_option_ranges_are_checked(tmp_path, photo_dir, config_file, option, value):
    with pytest.raises(ValueError, match=f"--{option.replace('_', '-')} must be"):
        Trainer(options(photo_dir, config_file, tmp_path / "run", **{option: value}))


def test_a_run_that_skips_every_update_stops_with_a_message_and_valid_json(tmp_path, photo_dir, config_file):
    from vdvae_zoo.training.trainer import TrainingStalled

    out = tmp_path / "run"
    with pytest.raises(
        TrainingStalled, match="3 updates in a row were skipped .* resume with a higher --skip-threshold"
    ):
        Trainer(options(photo_dir, config_file, out, steps=10, skip_threshold=1e-9, stop_after_skips=3)).train()
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert meta["step"] == 3 and meta["updates"] == 0
    for line in (out / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in log.jsonl"))


def test_images_that_vanish_during_the_run_are_replaced_and_training_goes_on(tmp_path, photo_dir, config_file):
    data = tmp_path / "data"
    shutil.copytree(photo_dir, data)
    trainer = Trainer(options(data, config_file, tmp_path / "run", steps=6))
    for f in sorted(data.iterdir())[:5]:
        f.unlink()
    with pytest.warns(RuntimeWarning, match="can no longer be read"):
        summary = trainer.train()
    assert summary["step"] == 6 and summary["updates"] == 6


def test_resume_checks_the_architecture_and_the_options(tmp_path, photo_dir, config_file):
    out = tmp_path / "run"
    Trainer(options(photo_dir, config_file, out, steps=2)).train()
    other = tmp_path / "other.json"
    other.write_text(json.dumps(tiny_config_dict(zdim=8)))
    with pytest.raises(ValueError, match=r"another architecture \(differing: zdim\)"):
        Trainer(options(photo_dir, other, out, steps=4, resume=True)).train()
    with pytest.raises(
        ValueError, match=r"options differ from the run's \(--lr 0.002 -> 0.005\).*--allow-changed-options"
    ):
        Trainer(options(photo_dir, config_file, out, steps=4, resume=True, lr=5e-3)).train()
    summary = Trainer(
        options(photo_dir, config_file, out, steps=4, resume=True, lr=5e-3, allow_changed_options=True)
    ).train()
    assert summary["step"] == 4
    # Resuming at the same --steps does nothing and adds no second end record.
    again = Trainer(options(photo_dir, config_file, out, steps=4, resume=True, lr=5e-3, allow_changed_options=True))
    assert again.train()["step"] == 4
    ends = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r.get("event") == "end"]
    assert [e["step"] for e in ends] == [2, 4]


def test_the_export_is_a_loadable_unit_and_stale_temporaries_go(tmp_path, photo_dir, config_file):
    out = tmp_path / "run"
    Trainer(options(photo_dir, config_file, out, steps=2)).train()
    assert sorted(p.name for p in (out / "model").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    (out / ".model.staging-999999").mkdir()  # left by a process that died while exporting
    Trainer(options(photo_dir, config_file, out, steps=3, resume=True)).train()
    assert not (out / ".model.staging-999999").exists()
    assert vdvae_zoo.load(out, device="cpu").sample(1).shape == (1, 16, 16, 3)


def test_images_of_another_size_follow_the_same_rule_as_bpd(tmp_path, photo_dir, config_file):
    data = tmp_path / "data"
    shutil.copytree(photo_dir, data)
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(data / "big.png")
    trainer = Trainer(options(data, config_file, tmp_path / "a"))
    assert len(trainer.train_set) + len(trainer.val_set) == 24  # skipped, as bpd skips it
    trainer = Trainer(options(data, config_file, tmp_path / "b", resize="center-crop"))
    assert len(trainer.train_set) + len(trainer.val_set) == 25


@pytest.mark.slow  # several seconds (processes, training, long chains): the quick run skips it
def test_a_short_from_scratch_run_visibly_learns_with_the_default_options(tmp_path, photo_dir, config_file):
    # Defaults for custom configs (GENERIC_DEFAULTS); measured in README: 8.95 -> 8.35 bpd in 100 steps.
    trainer = Trainer(
        TrainOptions(
            data=str(photo_dir),
            out=str(tmp_path / "run"),
            config=config_file,
            steps=40,
            batch_size=8,
            val_fraction=0.25,
            val_every=0,
            save_every=0,
            sample_every=0,
            device="cpu",
        )
    )
    before = trainer.validate()
    after = trainer.train()["final_val_bpd"]
    assert after < before - 0.1, (before, after)
