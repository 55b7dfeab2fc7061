"""The trainer's options: the one statement of them (names, types, defaults, help, ranges), from which the CLI's
`finetune` options are generated, with the defaults for models that are not a released preset and the options
a resumed run must keep."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import VDVAEConfig

__all__ = [
    "TrainOptions",
    "TRAINING_PRESETS",
    "GENERIC_DEFAULTS",
    "RESUME_FIXED",
    "check_resume",
    "preset_of",
    "Optimisation",
]


def _option(default: Any = None, help: str = "", **cli: Any) -> Any:
    """A TrainOptions field: its default and help, and for the command line `type` (int, float, str, 'path',
    'existing', 'threshold': a number or auto), `min`/`max`, `choices`, `multiple`, `required`. The CLI's
    `finetune` options are generated from these."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainOptions:
    """Everything a run needs: the one statement of the trainer's options (the CLI's `finetune` options are made
    from these fields). Optimisation fields left as None take the preset's values (TRAINING_PRESETS), else
    GENERIC_DEFAULTS."""

    data: str = _option(None, "Folder of training images (recursive).", type="existing", required=True)
    out: str = _option(None, "Run folder; loadable with vdvae_zoo.load.", type="path", required=True)
    model: str | None = _option(None, "Name or path to fine-tune from (its EMA weights).", type=str)
    config: str | None = _option(None, "Preset name or config.json: train from scratch.", type=str)
    val_data: str | None = _option(None, "Validation folder (default: a split of --data).", type="existing")
    val_fraction: float = _option(0.1, "Share of --data held out for validation.", type=float, min=0.0, max=0.9)
    steps: int = _option(
        1000,
        "Total iterations (applied + skipped updates); with --resume the run continues up to it.",
        type=int,
        min=1,
        max=10**9,
    )
    batch_size: int | None = _option(
        None,
        "Images per process and micro-batch (what must fit in memory). Default: the preset's.",
        type=int,
        min=1,
        max=65_536,
    )
    grad_accumulation: int = _option(
        1,
        "Micro-batches per update: each update sees batch-size x this x processes "
        "images (the paper's batch on fewer cards).",
        type=int,
        min=1,
        max=4_096,
    )
    grad_checkpoint: bool = _option(
        False,
        "Gradient checkpointing: recompute activations in the backward pass "
        "(same numbers; far less memory; 0.91-1.03x the step time measured on a CPU).",
    )
    ignore_memory_plan: bool = _option(
        False,
        "Train even when the memory plan says one step will not fit in the "
        "memory free on the device (the run is refused otherwise, before "
        "anything is written; the estimate can be wrong).",
    )
    lr: float | None = _option(
        None, "Peak learning rate (a too large one stops the run: it diverges).", type=float, min=0.0
    )
    weight_decay: float | None = _option(
        None, "AdamW weight decay (not on biases, gains, bias_xs).", type=float, min=0.0, max=10.0
    )
    warmup: int | None = _option(
        None, "Linear warm-up over this many applied updates (0: none).", type=int, min=0, max=10**9
    )
    grad_clip: float | None = _option(None, "Clip the gradient's total L2 norm to this.", type=float, min=0.0, max=1e9)
    skip_threshold: None | float | str = _option(
        None,
        "Skip updates whose gradient norm reaches this (<=0: never); auto: skip only outliers of the recent "
        "norms (above 3x the 90th percentile of the last 100; README, 'Fine-tuning').",
        type="threshold",
        max=1e12,
    )
    kl_warmup: int = _option(
        0,
        "Raise the KL term's weight linearly from 0 to 1 over this many steps (0: none). The "
        "validation bpd stays the true negative ELBO.",
        type=int,
        min=0,
        max=10**9,
    )
    free_bits: float = _option(
        0.0,
        "Free bits per stochastic layer, in nats (Kingma et al. 2016, the layers as groups, per image: each "
        "layer's KL counts as max(KL, this) in the training loss, so a layer below it gets no gradient from its "
        "KL; 0: none).",
        type=float,
        min=0.0,
        max=1e6,
    )
    log_to: tuple = _option(
        (),
        "Also log to tensorboard (extra [tensorboard]) or wandb (extra [wandb], honours "
        "WANDB_MODE=offline); repeatable. log.jsonl stays the source of truth.",
        choices=("tensorboard", "wandb"),
        multiple=True,
    )
    ema_rate: float | None = _option(
        None, "Rate of the exponential moving average of the weights.", type=float, min=0.0, max=1.0
    )
    val_every: int = _option(
        500, "Validate every N steps (0: only the final validation, after the last step).", type=int, min=0, max=10**9
    )
    save_every: int = _option(500, "Checkpoint every N steps (0: only at the end).", type=int, min=0, max=10**9)
    sample_every: int = _option(1000, "Write a sample grid every N steps (0: never).", type=int, min=0, max=10**9)
    log_every: int = _option(10, "Log a line to log.jsonl every N steps.", type=int, min=1, max=10**9)
    hflip: bool = _option(False, "Random horizontal flips.")
    resize: str = _option(
        "none",
        "center-crop: resize images of another size; none: skip them (as bpd does).",
        choices=("none", "center-crop"),
    )
    resume: bool = _option(False, "Continue the run in --out.")
    allow_changed_options: bool = _option(
        False, "With --resume, accept options that differ from the run's (they are named in a warning)."
    )
    device: str = _option("auto", "auto (CUDA when present), cpu, cuda, cuda:1.", type=str)
    dtype: str = _option(
        "float32", "bfloat16: autocast (CUDA, or CPUs with bf16 units).", choices=("float32", "bfloat16")
    )
    seed: int = _option(
        0,
        "Seed of the initialisation, the split, the order, flips and posterior noise.",
        type=int,
        min=0,
        max=2**63 - 1,
    )
    workers: int = _option(0, "DataLoader worker processes reading ahead.", type=int, min=0, max=256)
    skip_alarm: int = _option(50, "Warn after this many consecutive skipped updates.", type=int, min=1, max=10**9)
    stop_after_skips: int = _option(
        500,
        "Stop (after saving) when this many updates in a row were skipped: the run has stopped learning.",
        type=int,
        min=1,
        max=10**9,
    )
    min_images: int = _option(2, "Refuse to train on fewer usable images.", type=int, min=1, max=10**9)
    manifest: str | None = _option(None, "Another weights manifest for --model names (private zoos).", type="existing")

    def __post_init__(self) -> None:
        missing = [
            f.name for f in dataclasses.fields(self) if f.metadata.get("required") and getattr(self, f.name) is None
        ]
        if missing:
            raise TypeError(f"TrainOptions needs {' and '.join(m + '=' for m in missing)}")

    def resolve(self, preset: str | None) -> Optimisation:
        """Fill the optimisation fields left None from `preset`'s TRAINING_PRESETS (else GENERIC_DEFAULTS), check
        every range, and return them typed as they now are."""
        from_preset = TRAINING_PRESETS.get(preset or "", {})
        sources = {}
        for k, v in {**GENERIC_DEFAULTS, **from_preset}.items():
            if getattr(self, k) is None:
                setattr(self, k, v)
                sources[k] = f"preset {preset}" if k in from_preset else "generic"
            else:
                sources[k] = "given"
        self.check_ranges()
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(Optimisation) if f.name != "sources"}
        return Optimisation(**fields, sources=sources)

    def check_ranges(self) -> None:
        """Refuse values that make training diverge or mean nothing (after the defaults are filled in)."""

        def bad(name: str, value: Any, want: str) -> ValueError:
            return ValueError(f"--{name.replace('_', '-')} must be {want}, got {value}")

        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise bad(name, value, "a positive finite number")
        if self.weight_decay is None or self.ema_rate is None or self.skip_threshold is None:
            raise ValueError("the defaults must be filled in before the ranges are checked (Trainer does it)")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", self.weight_decay, "a finite number >= 0")
        if isinstance(self.skip_threshold, str):
            if self.skip_threshold != "auto":
                raise bad("skip_threshold", self.skip_threshold, "a number or auto")
        elif math.isnan(self.skip_threshold):
            raise bad("skip_threshold", self.skip_threshold, "a number (<= 0: never skip on the gradient norm)")
        if not (math.isfinite(self.free_bits) and self.free_bits >= 0):
            raise bad("free_bits", self.free_bits, "a finite number of nats >= 0")
        unknown = [t for t in self.log_to if t not in ("tensorboard", "wandb")]
        if unknown:
            raise bad("log_to", unknown[0], "tensorboard or wandb")
        if not 0 <= self.ema_rate < 1:
            raise bad("ema_rate", self.ema_rate, "in [0, 1)")
        for name in ("warmup", "batch_size"):
            if getattr(self, name) < (0 if name == "warmup" else 1):
                raise bad(name, getattr(self, name), ">= 0" if name == "warmup" else ">= 1")


@dataclass(frozen=True)
class Optimisation:
    """The optimisation options of a run with every default filled in (`TrainOptions.resolve`)."""

    lr: float
    weight_decay: float
    warmup: int
    grad_clip: float
    skip_threshold: float | str
    ema_rate: float
    batch_size: int
    #: Where each value came from: "given", "preset NAME" (the paper's, TRAINING_PRESETS) or "generic".
    sources: dict[str, str] = field(default_factory=dict, compare=False)


def preset_of(config: VDVAEConfig) -> str | None:
    """The released preset whose architecture `config` is (a folder made with `vdvae-zoo new imagenet64`, a
    converted checkpoint), or None: such a model trains with the preset's TRAINING_PRESETS defaults."""
    return next((name for name in TRAINING_PRESETS if config == VDVAEConfig.from_preset(name)), None)


#: Options a resumed run must share with the run it continues (others, e.g. --steps or --workers, may change).
RESUME_FIXED = (
    "model",
    "config",
    "data",
    "val_data",
    "val_fraction",
    "batch_size",
    "grad_accumulation",
    "lr",
    "weight_decay",
    "warmup",
    "grad_clip",
    "skip_threshold",
    "ema_rate",
    "hflip",
    "resize",
    "dtype",
    "seed",
    "manifest",
    "kl_warmup",
    "free_bits",
)


def check_resume(meta: Mapping[str, Any], config: VDVAEConfig, options: TrainOptions, out: Path) -> list[str]:
    """Refuse to resume the run in `out` (whose checkpoint's `meta` is given) with another architecture, or
    (unless `allow_changed_options`) with other RESUME_FIXED options; returns the options that changed."""
    saved = VDVAEConfig.from_dict(meta["config"])
    if saved != config:
        fields = [k for k, v in saved.to_dict().items() if config.to_dict()[k] != v]
        raise ValueError(
            f"--resume: the run in {out} was trained with another architecture (differing: "
            f"{', '.join(fields)}); resume with its --config/--model, or choose another --out"
        )
    before = meta.get("options")
    before, now = before if isinstance(before, dict) else {}, dataclasses.asdict(options)
    changed = [k for k in RESUME_FIXED if k in before and before[k] != now[k]]
    if changed and not options.allow_changed_options:
        listed = ", ".join(f"--{k.replace('_', '-')} {before[k]!r} -> {now[k]!r}" for k in changed)
        raise ValueError(
            f"--resume: options differ from the run's ({listed}); pass them as before, or add "
            "--allow-changed-options to continue with the new ones"
        )
    return changed


#: Optimisation defaults for models that are not a released preset (TRAINING_PRESETS has the presets'): small
#: custom models trained briefly, where the presets' EMA (0.999+) would leave the saved weights near their
#: initialisation and lr 2e-4 would barely move them (measured: README, "Fine-tuning").
GENERIC_DEFAULTS = dict(
    lr=1e-3, weight_decay=0.01, warmup=20, grad_clip=200.0, skip_threshold=400.0, ema_rate=0.99, batch_size=16
)


#: How each released model was trained (the paper's released hyper-parameters), keyed by the trainer's option
#: names (`TrainOptions`).
#: `batch_size` is per GPU; the authors used AdamW with betas (0.9, 0.9) for all of them.
TRAINING_PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": dict(
        lr=2e-4, weight_decay=0.01, warmup=100, ema_rate=0.9999, grad_clip=200.0, skip_threshold=400.0, batch_size=16
    ),
    "imagenet32": dict(
        lr=1.5e-4, weight_decay=0.01, warmup=100, ema_rate=0.999, grad_clip=200.0, skip_threshold=300.0, batch_size=8
    ),
    "imagenet64": dict(
        lr=1.5e-4, weight_decay=0.01, warmup=100, ema_rate=0.999, grad_clip=220.0, skip_threshold=380.0, batch_size=4
    ),
    "ffhq256": dict(
        lr=1.5e-4, weight_decay=0.01, warmup=100, ema_rate=0.999, grad_clip=130.0, skip_threshold=180.0, batch_size=1
    ),
    "ffhq1024": dict(
        lr=7e-5, weight_decay=0.01, warmup=100, ema_rate=0.999, grad_clip=360.0, skip_threshold=500.0, batch_size=1
    ),
}
