"""The trainer's logs in the tools people already watch: TensorBoard (`torch.utils.tensorboard`, extra
`[tensorboard]`) and Weights & Biases (extra `[wandb]`; `WANDB_MODE=offline` writes a run folder to sync later).

`log.jsonl` stays the source of truth: these receive the same records (`scalars` says which numbers, under which
names), plus the sample grids as images. A missing extra is one sentence before training starts (`check_available`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EXTRAS", "check_available", "scalars", "ExternalLoggers"]

#: Each logger, the module it needs and the extra that installs it.
EXTRAS = {"tensorboard": ("tensorboard", "vdvae-zoo[tensorboard]"), "wandb": ("wandb", "vdvae-zoo[wandb]")}


def check_available(kinds: Iterable[str]) -> None:
    """ImportError in one sentence, naming the extra, for a requested logger whose package is missing."""
    for kind in kinds:
        module, extra = EXTRAS[kind]
        if importlib.util.find_spec(module) is None:
            raise ImportError(f'--log-to {kind} needs the {module} package: pip install "{extra}"')


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a log.jsonl record as scalar tags: losses (bits per dim), grad norm, skips, lr, KL weight,
    validation bpd, and per layer `kl_bpd/layer_NN` and `active_units/layer_NN`."""
    names = {
        "loss_bpd": "train/loss_bpd",
        "neg_elbo_bpd": "train/neg_elbo_bpd",
        "distortion_bpd": "train/distortion_bpd",
        "rate_bpd": "train/rate_bpd",
        "grad_norm": "train/grad_norm",
        "skipped_total": "train/skipped_total",
        "lr": "train/lr",
        "kl_weight": "train/kl_weight",
        "val_bpd": "val/bpd",
        "final_val_bpd": "val/bpd",
        "active_units_total": "val/active_units_total",
    }
    out = {
        tag: float(record[key])
        for key, tag in names.items()
        if isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool)
    }
    for key, prefix in (("kl_bpd_per_layer", "kl_bpd"), ("active_units", "active_units")):
        for i, value in enumerate(record.get(key) or []):
            if isinstance(value, (int, float)):
                out[f"{prefix}/layer_{i:02d}"] = float(value)
    return out


class ExternalLoggers:
    """The loggers a run asked for (`kinds`), writing under the run folder `out` (rank 0 only)."""

    def __init__(self, kinds: Iterable[str], out: Path, name: str, options: dict[str, Any]):
        self.kinds: list[str] = list(dict.fromkeys(kinds))
        check_available(self.kinds)
        self._tensorboard = self._wandb = None
        if "tensorboard" in self.kinds:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(Path(out) / "tensorboard"))
        if "wandb" in self.kinds:
            import wandb

            try:
                self._wandb = wandb.init(project="vdvae-zoo", name=name, dir=str(out), config=options, reinit=True)
            except Exception as e:  # noqa: BLE001 - wandb's own errors (no login, no network) in one sentence
                self.close()
                first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
                raise ValueError(
                    f"--log-to wandb: Weights & Biases did not start ({first}). Log in with `wandb login`, or set "
                    "WANDB_MODE=offline to write the run locally and `wandb sync` it later"
                ) from None

    def log(self, record: dict[str, Any]) -> None:
        step, values = record.get("step"), scalars(record)
        if step is None or not values:
            return
        if self._tensorboard is not None:
            for tag, value in values.items():
                self._tensorboard.add_scalar(tag, value, global_step=step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def image(self, tag: str, picture: np.ndarray, step: int) -> None:
        """An RGB picture, uint8 (H, W, 3), such as a sample grid."""
        if self._tensorboard is not None:
            self._tensorboard.add_image(tag, picture, global_step=step, dataformats="HWC")
        if self._wandb is not None:
            import wandb

            self._wandb.log({tag: wandb.Image(picture)}, step=step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
