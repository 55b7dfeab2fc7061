"""Training that keeps learning: --skip-threshold auto, --kl-warmup, --free-bits, per-layer KL and active units,
and the logs people read (TensorBoard, Weights & Biases)."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import image_folder, random_images, tiny_config_dict

from vdvae_zoo import VDVAE, VDVAEConfig
from vdvae_zoo.training.rules import objective
from vdvae_zoo.training.trainer import Trainer, TrainingStalled, TrainOptions

BITS = 1 / math.log(2)


@pytest.fixture()
def data(tmp_path):
    return image_folder(tmp_path / "data", 24, size=16, seed=3, config=True), tmp_path / "config.json"


def trainer(tmp_path, data, name, **options):
    folder, config = data
    defaults = dict(
        data=str(folder),
        out=str(tmp_path / name),
        config=str(config),
        steps=10,
        batch_size=4,
        val_every=0,
        sample_every=0,
        save_every=0,
        log_every=1,
        val_fraction=0.25,
    )
    return Trainer(TrainOptions(**dict(defaults, **options)))


def records(tmp_path, name):
    return [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]


def test_auto_keeps_learning_where_a_fixed_threshold_skips_every_step(tmp_path, data):
    fixed = trainer(tmp_path, data, "fixed", steps=40, skip_threshold=1e-3, stop_after_skips=15, lr=3e-3, warmup=0)
    with pytest.raises(TrainingStalled):
        fixed.train()
    assert fixed.updates == 0 and fixed.skipped == 15
    auto = trainer(
        tmp_path, data, "auto", steps=40, skip_threshold="auto", stop_after_skips=15, lr=3e-3, warmup=0, val_every=40
    )
    auto.train()
    assert auto.updates >= 38
    losses = [r["loss_bpd"] for r in records(tmp_path, "auto") if "loss_bpd" in r]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1


def test_auto_skips_an_outlier_of_the_recent_norms(tmp_path, data):
    t = trainer(tmp_path, data, "rule", skip_threshold="auto")
    assert not any(t.skip_rule.too_big(1.0 + 0.01 * i) for i in range(30))  # 30 ordinary norms: none skipped
    assert t.skip_rule.too_big(1000.0)  # far above 3 x the 90th percentile
    assert not t.skip_rule.too_big(1.2)
    assert t.skip_rule.too_big(float("nan"))


def test_kl_warmup_weights_the_kl_term_as_defined_and_validation_stays_the_elbo(tmp_path, data):
    t = trainer(tmp_path, data, "warm", steps=6, kl_warmup=4, val_every=6)
    t.train()
    steps = [r for r in records(tmp_path, "warm") if "loss_bpd" in r]
    assert [r["kl_weight"] for r in steps] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    for r in steps:  # the loss is distortion + weight * rate, exactly as defined
        assert r["loss_bpd"] == pytest.approx(r["distortion_bpd"] + r["kl_weight"] * r["rate_bpd"], rel=1e-6)
        assert r["neg_elbo_bpd"] == pytest.approx(r["distortion_bpd"] + r["rate_bpd"], rel=1e-6)
        assert sum(r["kl_bpd_per_layer"]) == pytest.approx(r["rate_bpd"], rel=1e-6)
    assert steps[0]["loss_bpd"] < steps[0]["neg_elbo_bpd"]
    # the validation number is the true bound of the EMA weights, as scoring them directly gives
    from vdvae_zoo.scoring.engine import ScoreOptions, score_images

    images = torch.stack([t.val_set[i] for i in range(len(t.val_set))])
    values, _ = score_images(t.ema, images, range(len(images)), ScoreOptions(seed=0))
    val = [r["val_bpd"] for r in records(tmp_path, "warm") if r.get("val_bpd") is not None]
    assert val[-1] == pytest.approx(float(values["bpd"].mean()), rel=1e-6)


def test_free_bits_count_each_layer_at_least_lambda_nats(data):
    torch.manual_seed(0)
    model = VDVAE(VDVAEConfig.from_dict(tiny_config_dict())).train()
    images = random_images(2, size=16, seed=1)
    out = model(images, generator=torch.Generator().manual_seed(2), free_nats=0.5)
    assert (out["kl_free"] >= out["kl"] - 1e-6).all() and (out["kl_free"] >= 0.5 - 1e-5).all()
    big = model(images, generator=torch.Generator().manual_seed(2), free_nats=1e4)
    assert torch.allclose(big["kl_free"], torch.full_like(big["kl"], 1e4))  # every element below its share
    tiny = model(images, generator=torch.Generator().manual_seed(2), free_nats=1e-12)
    assert torch.allclose(tiny["kl_free"], tiny["kl"], rtol=1e-5, atol=1e-6)


def test_free_bits_change_the_training_loss_as_defined(tmp_path, data):
    t = trainer(tmp_path, data, "free", steps=2, free_bits=2.0)
    out = t.model(
        torch.stack([t.train_set[i] for i in range(3)]), generator=torch.Generator().manual_seed(0), free_nats=2.0
    )
    expected = out["distortion"] + out["kl_free"].sum(dim=1) / t.config.dims_per_image
    assert torch.allclose(objective(out, 1.0, 2.0, t.config.dims_per_image), expected)
    assert (objective(out, 1.0, 2.0, t.config.dims_per_image) >= out["neg_elbo"] - 1e-6).all()
    t.train()
    steps = [r for r in records(tmp_path, "free") if "loss_bpd" in r]
    assert all(r["loss_bpd"] > r["neg_elbo_bpd"] for r in steps)  # at init the layers' KL is far below 2 nats


def test_validation_logs_active_units_per_layer(tmp_path, data):
    t = trainer(tmp_path, data, "units", steps=2, val_every=2)
    t.train()
    val = [r for r in records(tmp_path, "units") if "active_units" in r]
    assert val and len(val[0]["active_units"]) == t.config.num_layers
    assert val[0]["active_units_total"] == sum(val[0]["active_units"])
    sizes = [t.config.zdim * r * r for r in t.config.layer_resolutions]
    assert all(0 <= a <= s for a, s in zip(val[0]["active_units"], sizes, strict=False))


def test_tensorboard_scalars_match_the_log(tmp_path, data):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = trainer(tmp_path, data, "tb", steps=4, val_every=2, sample_every=4, log_to=("tensorboard",))
    t.train()
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    logged = [r for r in records(tmp_path, "tb") if "loss_bpd" in r]
    board = {e.step: e.value for e in events.Scalars("train/loss_bpd")}
    assert sorted(board) == [r["step"] for r in logged]
    for r in logged:
        assert board[r["step"]] == pytest.approx(r["loss_bpd"], rel=1e-6)
    val = {e.step: e.value for e in events.Scalars("val/bpd")}
    assert val[2] == pytest.approx(next(r["val_bpd"] for r in records(tmp_path, "tb") if r.get("val_bpd")), rel=1e-6)
    assert "kl_bpd/layer_00" in events.Tags()["scalars"] and "active_units/layer_00" in events.Tags()["scalars"]
    assert "samples" in events.Tags()["images"]


@pytest.mark.slow  # wandb starts a service process
def test_wandb_offline_writes_its_run_folder(tmp_path, data, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    t = trainer(tmp_path, data, "wb", steps=2, log_to=("wandb",))
    t.train()
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_a_missing_extra_is_one_sentence_before_anything_is_written(tmp_path, data, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ImportError, match=r'--log-to wandb needs the wandb package: pip install "vdvae-zoo\[wandb\]"'):
        trainer(tmp_path, data, "missing", log_to=("wandb",))
    assert not (tmp_path / "missing").exists()


def test_the_cli_takes_the_new_options(tmp_path, data):
    from click.testing import CliRunner

    from vdvae_zoo.cli import main

    folder, config = data
    result = CliRunner().invoke(
        main,
        [
            "finetune",
            "--config",
            str(config),
            "--data",
            str(folder),
            "--out",
            str(tmp_path / "cli"),
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--skip-threshold",
            "auto",
            "--kl-warmup",
            "10",
            "--free-bits",
            "0.1",
            "--val-every",
            "0",
            "--sample-every",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "skip threshold auto, KL warm-up 10 steps, free bits 0.1 nats per layer" in result.output
    bad = CliRunner().invoke(
        main,
        [
            "finetune",
            "--config",
            str(config),
            "--data",
            str(folder),
            "--out",
            str(tmp_path / "bad"),
            "--skip-threshold",
            "sometimes",
        ],
    )
    assert bad.exit_code == 2 and "neither a number nor auto" in bad.output


def test_a_layer_below_the_free_bits_floor_gets_no_gradient_from_its_kl():
    """#38: the property the help states. With the floor between two layers' KLs, the layer below it contributes
    exactly zero gradient through kl_free, and the layer above it exactly its KL's gradient."""
    torch.manual_seed(0)
    model = VDVAE(VDVAEConfig.from_dict(tiny_config_dict())).train()
    with torch.no_grad():  # push the posteriors away from the priors so that the layers' KLs differ
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images = random_images(1, size=16, seed=1)
    out = model(images, generator=torch.Generator().manual_seed(2), free_nats=0.0)
    kl = out["kl"][0].detach()
    low, high = int(kl.argmin()), int(kl.argmax())
    floor = float(kl[low] + kl[high]) / 2
    assert kl[low] < floor < kl[high]
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(values):
        found = torch.autograd.grad(values, params, retain_graph=True, allow_unused=True)
        return torch.cat(
            [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(found, params, strict=True)]
        )

    out = model(images, generator=torch.Generator().manual_seed(2), free_nats=floor)
    free = out["kl_free"][0].detach()
    assert float(free[low]) == pytest.approx(floor) and float(free[high]) == pytest.approx(float(kl[high]))
    assert grads(out["kl_free"][0, low]).abs().max() == 0  # below the floor: no gradient at all
    torch.testing.assert_close(grads(out["kl_free"][0, high]), grads(out["kl"][0, high]))
    assert grads(out["kl"][0, low]).abs().max() > 0  # the plain KL of that layer does have one
