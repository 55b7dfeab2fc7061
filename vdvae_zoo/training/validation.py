"""Validation during training: the EMA model's bound on the held-out images, scored by the one scoring engine's
seed rule (image i of the validation set with `image_seed(seed, i)`, as `vdvae-zoo eval` would score it), and
its active units per layer (posterior collapse made visible)."""

from __future__ import annotations

from typing import Any

import torch

from ..compute.batching import image_seed
from ..scoring.engine import ScoreOptions, score_images
from .rules import active_units

__all__ = ["validation_bpd", "validation_units", "validation_record"]


def validation_bpd(model: Any, val_set: Any, seed: int) -> float | None:
    """Mean bits per dim of `model` on `val_set` (the true negative ELBO, whatever the training loss); None
    without validation images."""
    if val_set is None or len(val_set) == 0:
        return None
    images = torch.stack([val_set[i] for i in range(len(val_set))])
    values, _ = score_images(model, images, range(len(images)), ScoreOptions(seed=seed))
    return float(values["bpd"].mean())


def validation_units(model: Any, val_set: Any, seed: int, limit: int = 256) -> list[int] | None:
    """Active latent units per decoder layer on (up to `limit`) validation images (rules.active_units); None
    without at least two validation images."""
    if val_set is None or len(val_set) < 2:
        return None
    count = min(limit, len(val_set))
    images = torch.stack([val_set[i] for i in range(count)])
    return active_units(model.encode(images, stats=True, seeds=[image_seed(seed, i) for i in range(count)]))


def validation_record(model: Any, val_set: Any, seed: int, step: int) -> dict:
    """What a validation logs: the bound and the active units per layer."""
    record: dict[str, Any] = {"step": step, "val_bpd": validation_bpd(model, val_set, seed)}
    units = validation_units(model, val_set, seed)
    if units is not None:
        record.update(active_units=units, active_units_total=sum(units))
    return record
