"""What a training run says of itself: the summary it prints at the start, what the model card of OUT/model
records of it, and the ways it stops (TrainingStalled, TrainingDiverged, TrainingOutOfMemory)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..weights.manifest import hub_id_of

__all__ = [
    "TrainingStalled",
    "TrainingDiverged",
    "TrainingOutOfMemory",
    "out_of_memory_is_an_error",
    "run_card",
    "summary_lines",
]


class TrainingStalled(RuntimeError):
    """Every recent update was skipped: the run stopped learning (its checkpoint is saved)."""


class TrainingDiverged(RuntimeError):
    """An update made the weights non-finite; the run stops without saving them."""


class TrainingOutOfMemory(MemoryError):
    """A training step ran out of memory; the message names the options that make it fit."""


@contextmanager
def out_of_memory_is_an_error(trainer: Any) -> Iterator[None]:
    """A step that runs out of memory is not retried silently (a smaller batch would change the run): it stops with
    one sentence that names the options which fit it."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError):
        raise TrainingOutOfMemory(
            f"one training step ran out of memory on {trainer.device}: {trainer.memory.advice()}"
        ) from None


def run_card(trainer: Any, final: dict | None = None) -> dict:
    """What the run knows, for the model card of OUT/model: the last validation the log holds (the final one
    once the run has ended). `base_model` is a Hub id (front matter) or, for a local source, named in the text."""
    o = trainer.opt
    val = trainer.run.last_validation()[1] if trainer.rank == 0 else None
    hub_id = hub_id_of(o.model, trainer.opt.manifest) if o.model else None
    card = {
        "title": f"{trainer.out.name}: "
        + (f"fine-tuned from {o.model}" if o.model else f"trained from scratch ({o.config})"),
        "base_model": hub_id,
        "base_model_local": f"{o.model} (a local path, not on the Hub)" if o.model and not hub_id else None,
        "training_data": f"{len(trainer.train_set)} images from {o.data}",
        "steps": f"{trainer.step} iterations ({trainer.updates} applied updates, {trainer.skipped} skipped)",
        "optimisation": f"AdamW lr {o.lr:g}, batch {o.batch_size} x {o.grad_accumulation} micro-batches x "
        f"{trainer.world} processes, EMA rate {o.ema_rate}",
        "validation_bits_per_dim": f"{val:.4f} (the EMA weights, on {len(trainer.val_set)} held-out images)"
        if val is not None and trainer.val_set is not None
        else "not measured",
        "trained_with": "vdvae-zoo finetune",
    }
    return {k: v for k, v in card.items() if v is not None}


def summary_lines(trainer: Any) -> list[str]:
    """What the run will do, in a few lines (printed at the start)."""
    o, n = trainer.opt, sum(p.numel() for p in trainer.model.parameters())
    val = len(trainer.val_set) if trainer.val_set is not None else 0
    return [
        f"training {'from ' + o.model if o.model else 'from scratch (' + str(o.config) + ')'}: {n:,} parameters, "
        f"{trainer.config.image_size}x{trainer.config.image_size} images, on {trainer.device} ({o.dtype})",
        f"data: {len(trainer.train_set)} training and {val} validation images from {o.data}",
        f"optimisation: lr {o.lr:g} (warm-up {o.warmup} updates), batch {o.batch_size} x "
        f"{o.grad_accumulation} micro-batch(es) x {trainer.world} process(es)"
        + (", gradient checkpointing" if o.grad_checkpoint else "")
        + f", EMA rate {o.ema_rate}, grad clip {o.grad_clip:g}, skip threshold {o.skip_threshold}"
        + (f", KL warm-up {o.kl_warmup} steps" if o.kl_warmup else "")
        + (f", free bits {o.free_bits:g} nats per layer" if o.free_bits else ""),
        "defaults: "
        + (", ".join(f"{k.replace('_', '-')} from {v}" for k, v in trainer.hp.sources.items() if v != "given") or "-")
        + " (every value has a flag)",
        f"run folder: {trainer.out} (the EMA weights in {trainer.run.model_path.name}/ load with vdvae_zoo.load)",
    ]
