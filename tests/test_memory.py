"""At full size, in small: gradient checkpointing, gradient accumulation, passes that run out of memory, and the
memory plan. (The full-size figures are benchmarks/train_memory.py's, not asserted here.)"""

import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import image_folder, random_images, tiny_config_dict
from PIL import Image

from vdvae_zoo import VDVAE, VDVAEConfig
from vdvae_zoo.compute.batching import image_seed
from vdvae_zoo.compute.memory import SAVED_FLOATS, _activation_floats, training_memory
from vdvae_zoo.model import PassSizeReduced


def _saved_bytes_and_grads(model, images, checkpoint):
    """One training forward/backward: the loss, the gradients and the bytes autograd saved (each storage once)."""
    model.set_grad_checkpointing(checkpoint).zero_grad()
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(images, generator=torch.Generator().manual_seed(5))
    loss = out["neg_elbo"].mean()
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()], sum(seen.values())


@pytest.mark.parametrize("overrides", [{}, {"width": 24, "zdim": 6, "num_mixtures": 3}])
def test_grad_checkpointing_gives_the_same_loss_and_gradients_with_less_saved(overrides):
    torch.manual_seed(0)
    model = VDVAE(VDVAEConfig.from_dict(tiny_config_dict(**overrides))).train()
    images = random_images(3, size=model.config.image_size, seed=1)
    loss, grads, saved = _saved_bytes_and_grads(model, images, False)
    loss_ck, grads_ck, saved_ck = _saved_bytes_and_grads(model, images, True)
    assert loss_ck == loss
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_ck, strict=False))  # same draws, same arithmetic
    assert saved_ck < 0.5 * saved
    assert model.grad_checkpointing and not model.set_grad_checkpointing(False).grad_checkpointing


@pytest.mark.parametrize("checkpoint", [False, True])
def test_the_estimate_of_saved_activations_holds_on_a_config_it_was_not_fitted_on(checkpoint):
    """memory.SAVED_FLOATS was counted on 16x16 models; a 32x32 model of other widths and depths is within 15%."""
    config = VDVAEConfig.from_dict(
        tiny_config_dict(
            image_size=32,
            width=20,
            zdim=5,
            num_mixtures=4,
            enc_blocks="32x2,32d2,16x1,16d2,8x2,8d2,4x1,4d4,1x1",
            dec_blocks="1x1,4m1,4x2,8m4,8x1,16m8,16x2,32m16,32x1",
        )
    )
    torch.manual_seed(0)
    model = VDVAE(config).train()
    _, _, saved = _saved_bytes_and_grads(model, random_images(2, size=32, seed=2), checkpoint)
    top = config.width_at(32) * 32 * 32
    working = 6 * top + (
        sum(SAVED_FLOATS[False][:2]) * top + SAVED_FLOATS[False][2] * config.zdim * 32 * 32 if checkpoint else 0
    )
    estimate = 4 * (_activation_floats(config, checkpoint) - working)
    assert estimate / (saved / 2) == pytest.approx(1.0, abs=0.15)
    plan = training_memory(config, 1000, 4, grad_checkpoint=checkpoint)
    assert plan.total == pytest.approx(plan.state + 4 * plan.per_image + plan.process)


# ----------------------------------------------------------------------------------------- the trainer
@pytest.fixture()
def crops(tmp_path):
    return image_folder(tmp_path / "data", 12, size=16, seed=7, config=True), tmp_path / "config.json"


def _train(tmp_path, crops, name, **options):
    from vdvae_zoo.training.trainer import Trainer, TrainOptions

    folder, config = crops
    options = dict(
        dict(
            data=str(folder),
            out=str(tmp_path / name),
            config=str(config),
            steps=1,
            val_every=0,
            sample_every=0,
            save_every=0,
            warmup=0,
            val_fraction=0.0,
            lr=1e-2,
            ema_rate=0.0,
        ),
        **options,
    )
    trainer = Trainer(TrainOptions(**options))
    trainer.train()
    return trainer


def _update_gradients(tmp_path, crops, name, **options):
    """The gradient that the first update applies (captured at optimizer.step) and the loss it logs."""
    from vdvae_zoo.training.trainer import Trainer, TrainOptions

    folder, config = crops
    trainer = Trainer(
        TrainOptions(
            data=str(folder),
            out=str(tmp_path / name),
            config=str(config),
            steps=1,
            val_every=0,
            sample_every=0,
            val_fraction=0.0,
            **options,
        )
    )
    captured = []
    trainer.optimizer.step = lambda: captured.append([p.grad.clone() for p in trainer.model.parameters()])
    record = trainer.train_step()
    return captured[0], record


def test_one_update_accumulated_from_micro_batches_equals_one_of_the_whole_batch(tmp_path, crops):
    """N micro-batches of b images give the update of one batch of N * b (the per-image draws make it exact up to
    float rounding: compared at the gradient, since AdamW's first step divides by |g| and magnifies rounding)."""
    whole, whole_record = _update_gradients(tmp_path, crops, "whole", batch_size=4)
    norm = torch.cat([g.flatten() for g in whole]).norm()
    for b, n in ((2, 2), (1, 4)):
        parts, record = _update_gradients(tmp_path, crops, f"{b}x{n}", batch_size=b, grad_accumulation=n)
        assert record["loss_bpd"] == pytest.approx(whole_record["loss_bpd"], rel=1e-6)
        assert record["grad_norm"] == pytest.approx(whole_record["grad_norm"], rel=1e-5)
        difference = torch.cat([(g - h).flatten() for g, h in zip(whole, parts, strict=False)]).norm()
        assert difference <= 1e-5 * norm
    # and not trivially: a batch of 2 without accumulation is another update
    half, _ = _update_gradients(tmp_path, crops, "half", batch_size=2)
    assert torch.cat([(g - h).flatten() for g, h in zip(whole, half, strict=False)]).norm() > 1e-2 * norm


def test_the_trainer_with_checkpointing_gives_the_same_weights(tmp_path, crops):
    plain = _train(tmp_path, crops, "plain", batch_size=3, steps=2)
    checkpointed = _train(tmp_path, crops, "ck", batch_size=3, steps=2, grad_checkpoint=True)
    assert checkpointed.model.grad_checkpointing
    for a, b in zip(plain.model.parameters(), checkpointed.model.parameters(), strict=False):
        assert torch.equal(a, b)


def test_a_step_that_runs_out_of_memory_stops_with_the_options_that_fit(tmp_path, crops, monkeypatch):
    from vdvae_zoo.training.trainer import Trainer, TrainingOutOfMemory, TrainOptions

    folder, config = crops

    def refuse(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB")

    monkeypatch.setattr(VDVAE, "forward", refuse)
    trainer = Trainer(
        TrainOptions(
            data=str(folder),
            out=str(tmp_path / "oom"),
            config=str(config),
            steps=2,
            batch_size=4,
            val_every=0,
            sample_every=0,
        )
    )
    with pytest.raises(TrainingOutOfMemory) as info:
        trainer.train()
    message = str(info.value)
    assert "--grad-checkpoint" in message and "--grad-accumulation" in message and "--batch-size" in message


def test_the_memory_plan_says_before_step_one_what_will_not_fit(tmp_path, crops, monkeypatch, capsys):
    import vdvae_zoo.training.memory_plan as train

    plan_of = {"available": None}
    monkeypatch.setattr(train, "available_memory", lambda device: plan_of["available"])
    from vdvae_zoo.training.trainer import Trainer, TrainOptions

    folder, config = crops
    trainer = Trainer(
        TrainOptions(
            data=str(folder),
            out=str(tmp_path / "plan"),
            config=str(config),
            steps=1,
            batch_size=8,
            val_every=0,
            sample_every=0,
        )
    )
    plan = trainer.memory.plan()
    plan_of["available"] = plan.total * 2
    assert trainer.memory.check()[1] is None
    # room for the weights and 2 images with checkpointing, not 8 without
    with_ck = trainer.memory.plan(grad_checkpoint=True)
    plan_of["available"] = with_ck.state + with_ck.process + 2.5 * with_ck.per_image
    warning = trainer.memory.check()[1]
    assert warning and "--grad-checkpoint" in warning and "up to 2 images" in warning
    plan_of["available"] = plan.state + plan.process + 3.5 * plan.per_image
    warning = trainer.memory.check()[1]
    assert "--batch-size 3 --grad-accumulation 3" in warning  # 3 x 3 = 9 >= 8 images per update
    assert "memory plan:" in trainer.memory.check()[0]


def test_a_plan_that_does_not_fit_stops_before_anything_is_written(tmp_path, crops, monkeypatch):
    """#36: the plan refuses the run (naming the options that fit) before the run folder exists; proceeding
    takes --ignore-memory-plan, and then the warning is printed and the run trains."""
    import vdvae_zoo.training.memory_plan as memory_plan
    from vdvae_zoo.cli import main
    from vdvae_zoo.training.memory_plan import MemoryPlanRefused
    from vdvae_zoo.training.trainer import Trainer, TrainOptions

    folder, config = crops
    monkeypatch.setattr(memory_plan, "available_memory", lambda device: 1.0)  # one byte free: nothing fits
    options = dict(
        data=str(folder),
        out=str(tmp_path / "refused"),
        config=str(config),
        steps=1,
        batch_size=8,
        val_every=0,
        sample_every=0,
    )
    with pytest.raises(MemoryPlanRefused, match="--ignore-memory-plan") as info:
        Trainer(TrainOptions(**options))
    assert "--grad-checkpoint" in str(info.value) and not (tmp_path / "refused").exists()
    cli = [
        "finetune",
        "--data",
        str(folder),
        "--out",
        str(tmp_path / "refused"),
        "--config",
        str(config),
        "--steps",
        "1",
        "--batch-size",
        "8",
        "--val-every",
        "0",
        "--sample-every",
        "0",
    ]
    result = CliRunner().invoke(main, cli)
    assert result.exit_code == 1 and "Error: one step needs" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "refused").exists()
    result = CliRunner().invoke(main, cli + ["--ignore-memory-plan"])
    assert result.exit_code == 0, result.output
    assert "warning: one step needs" in result.output and "training anyway" in result.output
    assert (tmp_path / "refused" / "model" / "model.safetensors").is_file()


def test_finetune_cli_has_the_memory_options(tmp_path, crops):
    from vdvae_zoo.cli import main

    folder, config = crops
    result = CliRunner().invoke(
        main,
        [
            "finetune",
            "--data",
            str(folder),
            "--out",
            str(tmp_path / "cli"),
            "--config",
            str(config),
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--grad-accumulation",
            "2",
            "--grad-checkpoint",
            "--val-every",
            "0",
            "--sample-every",
            "0",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "batch 2 x 2 micro-batch(es) x 1 process(es), gradient checkpointing" in result.output
    assert "memory plan: about" in result.output


# ------------------------------------------------------------------------------------ out of memory in passes
def _fresh(model):
    model.runtime.pass_limit = None
    return model


@pytest.mark.parametrize("call", ["likelihood", "likelihood_iw", "encode", "sample", "likelihood_unseeded"])
def test_a_pass_that_runs_out_of_memory_is_halved_and_gives_the_same_results(call, tiny_model, monkeypatch):
    images = random_images(5, size=16, seed=3)
    seeds = [image_seed(0, i) for i in range(5)]
    run = {
        "likelihood": lambda m: m.likelihood(images, seeds=seeds, batch_size=8).bpd,
        "likelihood_iw": lambda m: m.likelihood(images, seeds=seeds, batch_size=8, n_samples=3).bpd_iw,
        "encode": lambda m: torch.cat([z.flatten(1) for z in m.encode(images, seeds=seeds, batch_size=8)], 1),
        "sample": lambda m: m.sample(5, seeds=seeds, batch_size=8).float(),
        "likelihood_unseeded": lambda m: (
            m.likelihood(images, generator=torch.Generator().manual_seed(1), batch_size=8).bpd
        ),
    }[call]
    expected = run(tiny_model)
    original = torch.nn.Conv2d._conv_forward

    def conv(self, x, weight, bias):
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return original(self, x, weight, bias)

    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", conv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = run(_fresh(tiny_model))
    said = [str(w.message) for w in caught if issubclass(w.category, PassSizeReduced)]
    assert len(said) == 1 and "with 8 images per pass; continuing with 2" in said[0]
    assert tiny_model.runtime.pass_limit == 2
    if call == "sample":
        assert (got - expected).abs().max() <= 1  # a pixel may round the other way
    else:
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    with warnings.catch_warnings(record=True) as again:  # the next call starts at 2 and says nothing
        warnings.simplefilter("always")
        run(tiny_model)
    assert not [w for w in again if issubclass(w.category, PassSizeReduced)]


def test_one_image_that_does_not_fit_is_one_sentence(tiny_model, monkeypatch):
    def refuse(self, x, weight, bias):
        raise torch.OutOfMemoryError("out of memory (simulated)")

    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", refuse)
    with pytest.raises(MemoryError, match="even one image per pass"):
        tiny_model.likelihood(random_images(3, size=16), seeds=[1, 2, 3], batch_size=4)


def test_commands_split_passes_that_run_out_of_memory(tmp_path, monkeypatch):
    """bpd (the scoring engine, as eval) and sample sets give the numbers and files of an unsplit run, and say the
    pass size they settled on."""
    from vdvae_zoo.cli import main

    runner = CliRunner()
    assert runner.invoke(main, ["new", "tiny32", "-o", str(tmp_path / "m")]).exit_code == 0
    folder = image_folder(tmp_path / "imgs", 5, size=32, seed=9)

    def outputs(tag):
        bpd = runner.invoke(
            main,
            [
                "bpd",
                "--model",
                str(tmp_path / "m"),
                str(folder),
                "--batch-size",
                "4",
                "-o",
                str(tmp_path / f"{tag}.json"),
            ],
        )
        assert bpd.exit_code == 0, bpd.output
        sample = runner.invoke(
            main, ["sample", str(tmp_path / "m"), "-n", "5", "--outdir", str(tmp_path / f"s{tag}"), "--batch-size", "4"]
        )
        assert sample.exit_code == 0, sample.output
        rows = json.loads((tmp_path / f"{tag}.json").read_text())
        rows = rows["images"] if isinstance(rows, dict) else rows
        pictures = [np.asarray(Image.open(p)).astype(int) for p in sorted((tmp_path / f"s{tag}").glob("*.png"))]
        return [r["bpd"] for r in rows], pictures, bpd.output + sample.output

    whole_bpd, whole_pictures, said = outputs("whole")
    assert "continuing with" not in said
    original = torch.nn.Conv2d._conv_forward
    refused = []

    def conv(self, x, weight, bias):
        if x.shape[0] > 2:
            refused.append(x.shape[0])
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return original(self, x, weight, bias)

    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", conv)
    split_bpd, split_pictures, said = outputs("split")
    assert refused and "ran out of memory with 4 images per pass; continuing with 2" in said
    assert np.allclose(split_bpd, whole_bpd, atol=1e-4)
    assert len(split_pictures) == 5 and all(
        np.abs(a - b).max() <= 1 for a, b in zip(split_pictures, whole_pictures, strict=False)
    )


def test_the_importance_weighted_bound_without_seeds_does_not_depend_on_the_pass_size(tiny_model):
    """#38: bpd_iw moved by up to 0.074 bpd when the pass was split; its draws now come from per-image seeds that
    the generator gives first, whatever the split."""
    images = random_images(5, size=16, seed=4)
    results = []
    for batch_size in (None, 2, 1):
        torch.manual_seed(11)
        results.append(_fresh(tiny_model).likelihood(images, n_samples=4, batch_size=batch_size))
    for r in results[1:]:
        torch.testing.assert_close(r.bpd_iw, results[0].bpd_iw, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(r.neg_elbo, results[0].neg_elbo, rtol=1e-4, atol=1e-4)
    torch.manual_seed(12)  # another seed, other draws: the test can tell draws apart
    other = _fresh(tiny_model).likelihood(images, n_samples=4)
    assert not torch.allclose(other.bpd_iw, results[0].bpd_iw, rtol=1e-4, atol=1e-4)


def test_accumulation_and_bfloat16_in_the_plan_and_its_advice():
    """#36/#38: the plan counts the whole gradient buffer when micro-batches accumulate, and bfloat16 with
    checkpointing on the CPU as more than float32 (measured: benchmarks/README.md); the advice never names
    --dtype bfloat16 where the plan says it needs more memory."""
    from vdvae_zoo.compute.memory import ACCUMULATION_BYTES_PER_PARAMETER, fitting_advice
    from vdvae_zoo.config import resolve_config

    config, parameters = resolve_config("cifar10"), 39_145_700
    single = training_memory(config, parameters, 2, grad_checkpoint=True)
    accumulating = training_memory(config, parameters, 2, grad_checkpoint=True, accumulating=True)
    assert accumulating.total - single.total == ACCUMULATION_BYTES_PER_PARAMETER * parameters
    fp32_ck = training_memory(config, parameters, 8, grad_checkpoint=True)
    bf16_ck = training_memory(config, parameters, 8, grad_checkpoint=True, dtype="bfloat16")
    bf16 = training_memory(config, parameters, 8, dtype="bfloat16")
    fp32 = training_memory(config, parameters, 8)
    assert bf16_ck.total > fp32_ck.total and bf16.total < fp32.total
    for checkpoint, advised in ((True, False), (False, True)):

        def plan_for(batch_size=None, grad_checkpoint=None, dtype=None, checkpoint=checkpoint):
            return training_memory(
                config,
                parameters,
                8 if batch_size is None else batch_size,
                grad_checkpoint=checkpoint if grad_checkpoint is None else grad_checkpoint,
                dtype=dtype or "float32",
            )

        advice = fitting_advice(plan_for, 1.5 * 2**30, 8, 8, checkpoint, "float32")
        assert ("--dtype bfloat16" in advice) is advised, advice
