"""Fine-tuning (or training from scratch) on a folder of images, with the paper's stabilisation:
AdamW (betas 0.9, 0.9), linear warm-up, gradient clipping, skipping updates whose gradient norm reaches
`skip_threshold` or whose loss is NaN (all processes decide together), and an EMA of the weights.

Multi-GPU runs are launched by `torchrun` (torch.distributed; NCCL on CUDA, gloo on CPU); rank 0 writes.

Departures from the original training loop, on purpose (README, "Fine-tuning"): the first update uses lr/warmup, not 0;
`warmup=0` means no warm-up; the warm-up counts applied updates only and is saved with the checkpoint;
weight decay spares biases, gains and `bias_xs`; a long run of skipped updates is reported.

Reproducibility: the posterior noise and flips of each image are drawn from generators seeded by
`batching.image_seed(image_seed(seed, step), index in the global batch)`, so a run gives the same weights whether
it is split across processes or resumed from a checkpoint (on the CPU; GPU kernels are not bitwise
deterministic). Validation is scored by the one scoring engine (scoring.py), image i of the validation set with
`image_seed(seed, i)`, as `vdvae-zoo eval` would score it.

Units: every loss a user reads (progress bar, log.jsonl, summary, chart) is in bits per dim.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..compute import distributed
from ..config import VDVAEConfig, resolve_config
from ..data.images import make_grid, save_png
from ..factory import load
from ..model import VDVAE
from ..weights.manifest import load_manifest
from ..weights.pretrained import pick_device
from .data import StepData
from .loggers import ExternalLoggers, check_available
from .memory_plan import MemoryPlanRefused, RunMemory
from .options import TRAINING_PRESETS, TrainOptions, check_resume, preset_of
from .report import (
    TrainingDiverged,
    TrainingOutOfMemory,
    TrainingStalled,
    out_of_memory_is_an_error,
    run_card,
    summary_lines,
)
from .rules import SkipRule, kl_weight, objective
from .run_folder import COUNTERS, RunFolder, finite_json, pack_training_state, unpack_training_state
from .validation import validation_bpd, validation_record

__all__ = ["TrainOptions", "Trainer", "finetune", "TrainingStalled", "TrainingDiverged", "TrainingOutOfMemory"]

BITS = 1.0 / math.log(2)  # nats -> bits


# ------------------------------------------------------------------------------------------------ trainer
class Trainer:
    """Train a VDVAE on image folders. `Trainer(options).train()`; see TrainOptions for the fields."""

    def __init__(self, options: TrainOptions):
        self.opt = o = options
        if (o.model is None) == (o.config is None):
            raise ValueError(
                "give exactly one of model= (a name or path to fine-tune) and config= (to train from scratch)"
            )
        if o.steps < 1:
            raise ValueError(f"steps must be >= 1, got {o.steps}")
        if o.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {o.dtype!r}")
        self.world, self.rank, local_rank = distributed.launched_world()
        use_cuda = torch.cuda.is_available() and o.device != "cpu"
        distributed.join(use_cuda)
        self.device = pick_device(
            f"cuda:{local_rank}" if o.device == "auto" and torch.cuda.is_available() else o.device
        )
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

        # Everything that can refuse the run is checked before the run folder is written.
        manifest = load_manifest(o.manifest)
        if o.model is not None:
            preset = manifest.get(o.model).preset if o.model in manifest else None
            config = (
                manifest.get(o.model).resolve_config() if o.model in manifest else VDVAE.config_of(o.model, manifest)
            )
        else:
            config = resolve_config(o.config)
            preset = o.config if isinstance(o.config, str) and o.config in TRAINING_PRESETS else None
        preset = preset or preset_of(config)  # a folder whose architecture is a preset's trains as the paper did
        self.hp = hp = o.resolve(preset)  # the optimisation options, every default filled in
        check_available(o.log_to)  # a missing extra is one sentence before anything is written
        self.out = Path(o.out)
        self.data = StepData(o, config.image_size, config.image_channels, self.world, self.rank, self.device)
        self.train_set, self.val_set = self.data.train_set, self.data.val_set
        # Model: warm start from EMA weights, or the paper's initialisation.
        if o.model is not None:
            self.model = load(o.model, device="cpu", manifest=manifest).train()
        else:
            torch.manual_seed(o.seed)
            self.model = VDVAE(config).train()
        self.config: VDVAEConfig = self.model.config
        self.model.set_grad_checkpointing(o.grad_checkpoint)
        self.model.to(self.device)
        self.ema = VDVAE(self.config).to(self.device).eval()
        self.ema.load_state_dict(self.model.state_dict())
        self.ema.requires_grad_(False)

        decay = [p for n, p in self.model.named_parameters() if n.endswith(".weight")]
        no_decay = [p for n, p in self.model.named_parameters() if not n.endswith(".weight")]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr,
            betas=(0.9, 0.9),
        )
        self.net: torch.nn.Module = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

        self.step = 0  # iterations done (applied + skipped)
        self.updates = 0  # applied updates (drives the warm-up)
        self.skipped = 0
        self.nan_count = 0
        self.consecutive_skips = 0
        self._saved_step = 0  # the step of the checkpoint in OUT (0: none yet)
        self._stop_signal: int | None = None
        self._previous_handlers: dict[Any, Any] = {}
        self._saving = False
        self.skip_rule = SkipRule(hp.skip_threshold)
        self.loggers: ExternalLoggers | None = None

        self.memory = RunMemory(
            self.config,
            sum(p.numel() for p in self.model.parameters()),
            hp.batch_size,
            self.data.images_per_update,
            o.grad_checkpoint,
            o.dtype,
            self.device,
        )
        self.memory_line, self.memory_problem = self.memory.check()
        if self.memory_problem and not o.ignore_memory_plan:  # refused before the run folder is written
            raise MemoryPlanRefused(
                f"{self.memory_problem}. Or pass --ignore-memory-plan to train anyway (the estimate can be wrong)"
            )
        self.run = RunFolder(self.out, writer=self.rank == 0)
        self.run.prepare(resume=o.resume, source=o.model, start={"options": asdict(o)})

    # ----------------------------------------------------------------------------------------- one step
    def lr_at(self, updates: int) -> float:
        hp = self.hp
        return hp.lr if hp.warmup <= 0 else hp.lr * min(1.0, (updates + 1) / hp.warmup)

    def train_step(self) -> dict:
        o, hp = self.opt, self.hp
        images = self.data.batch(self.step)
        weight = kl_weight(self.step, o.kl_warmup)
        lr = self.lr_at(self.updates)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if o.dtype == "bfloat16" else nullcontext()
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        parts = [slice(i, i + hp.batch_size) for i in range(0, len(images), hp.batch_size)]
        loss = neg_elbo = distortion = rate = 0.0
        kl_per_layer = torch.zeros(self.config.num_layers, dtype=torch.float64)
        free_nats = {"free_nats": o.free_bits} if o.free_bits > 0 else {}
        for k, part in enumerate(parts):  # micro-batches: gradients add up; DDP synchronises on the last one
            sync = k == len(parts) - 1 or self.world == 1
            no_sync = nullcontext() if sync else self.net.no_sync()  # type: ignore[operator]  # DDP's, when world > 1
            with no_sync, out_of_memory_is_an_error(self):
                with autocast:
                    out = self.net(images[part], noise=self.data.noise(self.step, part), **free_nats)
                share = out["neg_elbo"].shape[0] / len(images)  # the mean over the whole update
                loss_here = objective(out, weight, o.free_bits, self.config.dims_per_image).mean()
                (loss_here * share).backward()
            loss += loss_here.item() * share
            neg_elbo += out["neg_elbo"].mean().item() * share
            distortion += out["distortion"].mean().item() * share
            rate += out["rate"].mean().item() * share
            kl_per_layer += out["kl"].detach().double().mean(dim=0).cpu() * share
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), hp.grad_clip).item()
        nan_loss = math.isnan(distortion) or math.isnan(rate)
        too_big = self.skip_rule.too_big(grad_norm)
        skip = distributed.any_across_ranks(nan_loss or too_big, self.device)
        if skip:
            self.skipped += 1
            self.consecutive_skips += 1
            self.nan_count += int(nan_loss)
        else:
            self.optimizer.step()
            if not self._weights_finite():
                raise TrainingDiverged(
                    f"the weights became non-finite (inf or NaN) at step {self.step + 1}: the update was too large "
                    f"(--lr {hp.lr:g}). Nothing of it was saved"
                    + (
                        f"; the checkpoint of step {self._saved_step} in {self.out} is kept: resume with a lower --lr "
                        "and --allow-changed-options"
                        if self._saved_step
                        else "; run again with a lower --lr"
                    )
                )
            self.updates += 1
            self.consecutive_skips = 0
            with torch.no_grad():
                for p_ema, p in zip(self.ema.parameters(), self.model.parameters(), strict=False):
                    p_ema.mul_(hp.ema_rate).add_(p.detach(), alpha=1.0 - hp.ema_rate)
        self.step += 1
        elapsed = time.perf_counter() - t0
        record = {
            "step": self.step,
            "loss_bpd": loss * BITS,
            "neg_elbo_bpd": neg_elbo * BITS,
            "distortion_bpd": distortion * BITS,
            "rate_bpd": rate * BITS,
            "kl_weight": weight,
            "kl_bpd_per_layer": (kl_per_layer / self.config.dims_per_image * BITS).tolist(),
            "grad_norm": grad_norm,
            "skipped": skip,
            "skipped_total": self.skipped,
            "nan_total": self.nan_count,
            "lr": lr,
            "images_per_s": len(images) * self.world / max(elapsed, 1e-9),
            "time_s": elapsed,
        }
        if self.consecutive_skips and self.consecutive_skips % o.skip_alarm == 0:
            warning = record["warning"] = (
                f"{self.consecutive_skips} updates in a row were skipped (gradient norm {grad_norm:.1f}, "
                f"skip threshold {hp.skip_threshold}): training has stopped learning. Raise "
                "--skip-threshold (or use --skip-threshold auto) or lower --lr."
            )
            if self.rank == 0:
                print("warning: " + warning, file=sys.stderr)
        return record

    def _weights_finite(self) -> bool:
        norms = torch._foreach_norm([p.detach() for p in self.model.parameters()])
        return bool(torch.isfinite(torch.stack(norms)).all())

    # ------------------------------------------------------------------------------------ eval, samples
    def validate(self) -> float | None:
        """Mean bits per dim of the EMA model on the validation images (validation.validation_bpd)."""
        return validation_bpd(self.ema, self.val_set, self.opt.seed)

    def write_samples(self) -> Path:
        gen = torch.Generator(device=self.device).manual_seed(self.opt.seed)
        images = self.ema.sample(16, temperature=1.0, generator=gen)
        grid = make_grid(images.numpy(), zoom=None)
        if self.loggers is not None:
            self.loggers.image("samples", np.asarray(grid.convert("RGB")), self.step)
        return save_png(grid, self.out / "samples" / f"step_{self.step:07d}.png")

    def _close_loggers(self) -> None:
        if self.loggers is not None:
            self.loggers.close()
            self.loggers = None

    def _log(self, record: dict) -> None:
        """A record into log.jsonl (the source of truth) and the external loggers."""
        self.run.log(record)
        if self.loggers is not None:
            self.loggers.log(record)

    # -------------------------------------------------------------------------------------- checkpoints
    def _state(self):
        return pack_training_state(
            self.model,
            self.ema,
            self.optimizer,
            {k: getattr(self, k) for k in COUNTERS},
            {"grad_norm_history": self.skip_rule.history, "config": self.config.to_dict(), "options": asdict(self.opt)},
        )

    def save(self) -> None:
        """The checkpoint (atomically: a failed save leaves the previous one) and OUT/model with its card."""
        if self.rank != 0:
            self._saved_step = self.step
            return
        self._saving = True
        tensors, meta = self._state()
        self.run.save_checkpoint(tensors, meta)
        self.run.export(self.ema, run_card(self))  # OUT/model: vdvae_zoo.load(OUT) loads these EMA weights
        self._saving = False
        self._saved_step = self.step

    def resume(self) -> bool:
        found = self.run.load_checkpoint()
        if found is None:
            return False
        tensors, meta = found
        changed = check_resume(meta, self.config, self.opt, self.out)
        if changed:
            self._say(f"warning: continuing with changed options: {', '.join(changed)}")
        try:
            counters = unpack_training_state(tensors, meta, self.model, self.ema, self.optimizer)
        except ValueError as e:
            raise ValueError(
                f"--resume: the checkpoint in {self.run.checkpoint_path} cannot be trusted: {e}. Start a new run in "
                "another --out (the EMA weights in model/ are still loadable)"
            ) from None
        for key, value in counters.items():
            setattr(self, key, value)
        history = meta.get("grad_norm_history", [])
        self.skip_rule = SkipRule(self.hp.skip_threshold, history if isinstance(history, list) else [])
        self._saved_step = self.step
        return True

    # ---------------------------------------------------------------------------------------------- loop
    def _say(self, line: str) -> None:
        if self.rank == 0:
            print(line, file=sys.stderr)

    def _on_signal(self, signum, frame):
        """The first SIGINT/SIGTERM stops the run after the step in progress, with a checkpoint; a second one
        stops it at once (the handlers the run replaced take it; the last checkpoint stays, written atomically)."""
        if self._stop_signal is not None:
            for s, handler in self._previous_handlers.items():
                signal.signal(s, handler)
            signal.raise_signal(signum)
            return
        self._stop_signal = signum
        if self.rank == 0:
            print(
                f"\n{signal.Signals(signum).name}: stopping after this step, with a checkpoint; send it again to stop "
                "at once (the last checkpoint stays)",
                file=sys.stderr,
            )

    def train(self) -> dict:
        """Run until `steps`; returns a summary (valid JSON: no NaN). The first SIGINT/SIGTERM stops the run after
        the step in progress and saves a checkpoint; then the signal is passed on to the handler the run replaced
        (the default: KeyboardInterrupt for SIGINT, the end of the process for SIGTERM), so that a signal is never
        swallowed. Were it ignored there, the summary says `stopped_by_signal`. A second signal stops at once; the
        last checkpoint stays. A run whose updates are all skipped stops with a RuntimeError, after saving."""
        o = self.opt
        if o.resume:
            self._say(
                f"resumed from step {self.step} of {o.steps}"
                if self.resume()
                else f"{self.out} holds no checkpoint yet (the run stopped before its first one): it starts from "
                "step 0 with the same options"
            )
        for line in summary_lines(self):
            self._say(line)
        self._say(self.memory_line)
        if self.memory_problem:
            self._say(f"warning: {self.memory_problem} (training anyway: --ignore-memory-plan)")
        if self.step >= o.steps:
            self._say(f"the run is already at step {self.step} of --steps {o.steps}; raise --steps to continue")
            return finite_json(
                {"step": self.step, "updates": self.updates, "skipped": self.skipped, "stopped_by_signal": None}
            )
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self._previous_handlers = previous
        stopped, bar = None, None
        try:
            from ..data.progress import progress_bar

            if o.log_to and self.rank == 0:
                self.loggers = ExternalLoggers(o.log_to, self.out, self.out.name, asdict(o))
            bar = progress_bar(total=o.steps, initial=self.step, enabled=self.rank == 0, desc="training", unit="step")
            while self.step < o.steps:
                record = self.train_step()
                bar.update(1)
                if self.step % o.log_every == 0 or record.get("warning") or self.step == o.steps:
                    self._log(record)
                    bar.set_postfix(  # the objective (with KL warm-up and free bits); the bound is neg_elbo_bpd
                        loss_bpd=f"{record['loss_bpd']:.3f}",
                        elbo_bpd=f"{record['neg_elbo_bpd']:.3f}",
                        skipped=self.skipped,
                    )
                if o.val_every and self.step % o.val_every == 0:
                    self._log(validation_record(self.ema, self.val_set, self.opt.seed, self.step))
                if o.sample_every and self.step % o.sample_every == 0 and self.rank == 0:
                    self.write_samples()
                stop = distributed.any_across_ranks(self._stop_signal is not None, self.device)
                stalled = self.consecutive_skips >= o.stop_after_skips
                if (o.save_every and self.step % o.save_every == 0) or stop or stalled or self.step == o.steps:
                    self.save()
                if stop:
                    stopped = int(self._stop_signal or signal.SIGTERM)
                    self.run.log(
                        {
                            "step": self.step,
                            "event": "stopped",
                            "stopped_by_signal": stopped,
                            "resume": "run the same command with --resume",
                        }
                    )
                    break
                if stalled:
                    raise TrainingStalled(self._stalled_message(record))
            bar.close()
        except Exception as e:
            saving_failed = isinstance(e, OSError) and self._saving  # a full disk: trying again fails again
            if self.step > 0 and not saving_failed and not isinstance(e, (TrainingStalled, TrainingDiverged)):
                self.save()  # keep what was learned (e.g. files changed under the run); --resume continues
            raise
        finally:
            if bar is not None:
                bar.close()  # ends its line, so that a message after it starts on its own
            if stopped or sys.exc_info()[0] is not None:
                self._close_loggers()
            self.data.close()  # stops the DataLoader's worker processes
            for s, handler in previous.items():
                signal.signal(s, handler)
        if stopped:  # saved: now the signal goes where it was going (a CLI's handler, a test runner, the default)
            signal.raise_signal(stopped)
        summary: dict[str, Any] = {
            "step": self.step,
            "updates": self.updates,
            "skipped": self.skipped,
            "stopped_by_signal": stopped,
        }
        if not stopped:
            if self.updates == 0:
                self._close_loggers()
                raise TrainingStalled(self._stalled_message(record))
            summary["final_val_bpd"] = self.validate()
            summary["ranks_identical"] = distributed.parameters_identical(self.model, self.world)
            self._log(dict(summary, event="end"))
            self._close_loggers()
            if self.rank == 0:
                self.run.write_card(self.ema, run_card(self))  # the card states the numbers the run printed last
                self.run.plot_curves()
        return finite_json(summary)

    def _stalled_message(self, record: dict) -> str:
        return (
            f"training stopped learning: {self.consecutive_skips} updates in a row were skipped (last gradient "
            f"norm {record['grad_norm']:.3g}, skip threshold {self.opt.skip_threshold}; "
            f"{self.nan_count} NaN losses). The checkpoint in {self.out} was saved; resume with a higher "
            "--skip-threshold or a lower --lr (and --allow-changed-options)."
        )


def finetune(**kwargs) -> dict:
    """Python entry point: `vdvae_zoo.finetune(model="ffhq256", data="faces/", out="runs/faces", steps=1000)`."""
    trainer = Trainer(TrainOptions(**kwargs))
    try:
        return trainer.train()
    finally:
        distributed.leave()
