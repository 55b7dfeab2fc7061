"""How much memory a pass or a training step will need, estimated from the config before anything runs.

Inference (`inference_bytes_per_image`) sizes the automatic pass (batching.py). Training (`training_memory`) is the
trainer's plan: it says before step 1 what will not fit and which option fixes it.

A training step holds, per process:
- the weights, AdamW's two moments and the EMA copy (16 bytes per parameter), and the part of the gradients that
  exists when the activations peak, early in the backward pass: `STATE_BYTES_PER_PARAMETER` = 17, from the
  imagenet64 preset's measured peaks at batch 1, 2 and 4 (benchmarks/README.md, "Training memory");
- per image, the activations autograd saves for the backward pass. They are linear in the architecture: per encoder
  block a * W * r^2 floats, per decoder layer (b * W + c * zdim) * r^2, and d * M * H * W for the output mixture
  (W: the width at resolution r, M: mixtures). The coefficients below were counted on tiny models (the bytes
  autograd saves, through torch.autograd.graph.saved_tensors_hooks; 32 configs, fit within 3.3%; two held-out
  configs within 5%), with and without gradient checkpointing;
- the backward pass's working memory: gradients of a few states at the top resolution, and with checkpointing
  one decoder layer recomputed there;
- on the CPU, the process itself (Python, torch): `PROCESS_BYTES`.
How close the estimate comes to measured peaks: benchmarks/README.md, "Training memory".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import VDVAEConfig

__all__ = [
    "inference_bytes_per_image",
    "TrainingMemory",
    "training_memory",
    "largest_batch",
    "fitting_advice",
    "gib",
    "available_memory",
]

#: Floats saved per image for the backward pass: (encoder block W r^2, decoder layer W r^2, decoder layer zdim r^2,
#: output M H W, output H W), without and with gradient checkpointing (module docstring).
SAVED_FLOATS = {False: (4.18, 14.12, 6.42, 49.3, 4.0), True: (1.17, 1.29, 0.0, 49.3, 29.7)}
#: Weights, AdamW's moments, EMA (4 bytes each), and the gradients alive at the activations' peak (measured).
STATE_BYTES_PER_PARAMETER = 17
#: With gradient accumulation every gradient exists from the first micro-batch on: the whole buffer (4 bytes per
#: parameter) is alive at the later micro-batches' peaks (measured: benchmarks/README.md, "Training memory").
ACCUMULATION_BYTES_PER_PARAMETER = 4
#: Resident memory of a Python process with torch loaded, before any model (CPU only).
PROCESS_BYTES = 0.45 * 2**30
#: bfloat16 autocast's activations per image against float32's, without and with gradient checkpointing. Without,
#: the convolutions' inputs are saved in half the bytes (the residual stream stays float32): 0.57 measured. With
#: checkpointing on the CPU, bf16 keeps 2.1x float32's (measured on cifar10 at batch 2 and 8 and imagenet64 at batch
#: 2: the recomputed blocks hold float32 and bfloat16 copies of their inputs), so bf16 then costs memory instead of
#: saving it. Not measured on a GPU: there the factor without checkpointing is used for both.
BF16_ACTIVATION_FACTOR = {("cpu", False): 0.57, ("cpu", True): 2.1, ("cuda", False): 0.57, ("cuda", True): 0.57}


def gib(n: float) -> str:
    """Bytes for a person: GiB, or MiB below one GiB."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def inference_bytes_per_image(config: VDVAEConfig) -> float:
    """Bytes one image needs in a pass without autograd (likelihood, encode, sample): the activations alive at once
    (checked against measured peak RSS on the cifar10 and imagenet64 presets: benchmarks/README.md)."""
    layer_resolutions = config.layer_resolutions
    per_resolution = [config.width_at(r) * r * r for r in sorted(set(layer_resolutions))]
    states = 2 * sum(per_resolution)  # encoder activations and decoder states, one per resolution
    working = 8 * max(per_resolution)  # one layer's intermediates at the top resolution
    latents = 6 * config.zdim * sum(r * r for r in layer_resolutions)  # z, prior, posterior, KL of every layer
    output = 40 * config.num_mixtures * config.image_size**2  # the mixture of logistics, intermediates
    return 4 * (states + working + latents + output) * 1.25  # + allocator slack


@dataclass(frozen=True)
class TrainingMemory:
    """The estimated peak of one training step, in bytes, and its parts."""

    state: float  # weights, optimizer moments, EMA, gradients alive at the peak
    per_image: float  # activations saved for the backward pass, and its working memory, per image
    process: float  # the process itself (CPU), 0 on CUDA
    batch_size: int

    @property
    def total(self) -> float:
        return self.state + self.per_image * self.batch_size + self.process

    def describe(self) -> str:
        return (
            f"about {gib(self.total)} at the peak: {gib(self.state)} of weights, optimizer state, EMA and "
            f"gradients, and {gib(self.per_image)} per image x {self.batch_size}"
        )


def _activation_floats(config: VDVAEConfig, grad_checkpoint: bool) -> float:
    enc_w, dec_w, dec_z, out_m, out_px = SAVED_FLOATS[grad_checkpoint]
    encoder = sum(config.width_at(s.resolution) * s.resolution**2 for s in config.encoder_blocks)
    decoder_w = sum(config.width_at(r) * r * r for r in config.layer_resolutions)
    decoder_z = sum(config.zdim * r * r for r in config.layer_resolutions)
    pixels = config.image_size**2
    saved = enc_w * encoder + dec_w * decoder_w + dec_z * decoder_z + (out_m * config.num_mixtures + out_px) * pixels
    top = config.width_at(config.image_size) * pixels
    working: float = 6 * top  # gradients of the states at the top resolution during the backward pass
    if grad_checkpoint:  # one decoder layer (and encoder block) recomputed at the top resolution
        no_ck = SAVED_FLOATS[False]
        working += (no_ck[0] + no_ck[1]) * top + no_ck[2] * config.zdim * pixels
    return saved + working


def training_memory(
    config: VDVAEConfig,
    parameters: int,
    batch_size: int,
    *,
    grad_checkpoint: bool = False,
    dtype: str = "float32",
    device_type: str = "cpu",
    accumulating: bool = False,
) -> TrainingMemory:
    """The estimated peak of one training step of `batch_size` images (per process and micro-batch) of a model
    with `parameters` parameters; `accumulating`: more than one micro-batch per update (--grad-accumulation)."""
    per_image = 4 * _activation_floats(config, grad_checkpoint)
    if dtype == "bfloat16":
        per_image *= BF16_ACTIVATION_FACTOR["cpu" if device_type == "cpu" else "cuda", grad_checkpoint]
    state_bytes = STATE_BYTES_PER_PARAMETER + (ACCUMULATION_BYTES_PER_PARAMETER if accumulating else 0)
    return TrainingMemory(
        state_bytes * parameters, per_image, PROCESS_BYTES if device_type == "cpu" else 0.0, batch_size
    )


def largest_batch(plan: TrainingMemory, available: float) -> int:
    """The most images per micro-batch that the plan says fit in `available` bytes (0: not even one)."""
    room = available - plan.state - plan.process
    return max(0, int(room // plan.per_image)) if room > 0 else 0


def fitting_advice(
    plan_for: Callable[..., TrainingMemory],
    available: float | None,
    batch_size: int,
    images_per_update: int,
    grad_checkpoint: bool,
    dtype: str,
) -> str:
    """The options that make a training step fit in `available` bytes, with the numbers the plan gives:
    `plan_for(batch_size=None, grad_checkpoint=None, dtype=None)` is the run's plan with any of them changed.
    bfloat16 is advised only where the plan says it needs less memory than the run's dtype (with checkpointing
    on the CPU it needs more)."""
    tips = []
    if not grad_checkpoint:
        fits = largest_batch(plan_for(grad_checkpoint=True), available) if available else 0
        tips.append(
            "add --grad-checkpoint (same numbers, a recomputed forward pass"
            + (f"; then up to {fits} images per micro-batch fit)" if fits else ")")
        )
    fits = largest_batch(plan_for(), available) if available else 0
    if 0 < fits < batch_size:
        accumulate = -(-images_per_update // fits)
        tips.append(
            f"use --batch-size {fits} --grad-accumulation {accumulate} (the update then sees "
            f"{fits * accumulate} images per process instead of {images_per_update})"
        )
    else:
        tips.append("lower --batch-size and raise --grad-accumulation to keep the images per update")
    if dtype == "float32" and plan_for(dtype="bfloat16").total < plan_for().total:
        tips.append("--dtype bfloat16")
    return "; or ".join(tips)


def available_memory(device) -> float | None:
    """Bytes free for this process on `device`: the GPU's free memory, or the CPU's MemAvailable (Linux);
    None when unknown."""
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None
