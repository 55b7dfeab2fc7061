"""Read a VDVAE's architecture off a checkpoint's tensor shapes, and compare it with a config.

Shapes tell each block's width (channels) and kernel (3x3 at resolutions > 2, 1x1 at 1 and 2), the latent
size, the number of mixtures, and the resolutions of the learned starting states `bias_xs`. They do not tell
where the encoder down-samples or which resolution a run of equal-width 3x3 blocks works at: the report says
so instead of guessing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch

from ..blocks import kernel_size
from ..config import VDVAEConfig
from ..nn.network import BIAS_XS, DECODER_LAYERS, ENCODER_BLOCKS, GAIN, OUT_CONV
from .original import read_checkpoint, strip_ddp_prefix

__all__ = ["inspect_checkpoint", "CheckpointInfo", "BlockRun", "compare_with_config"]


@dataclass
class BlockRun:
    """Consecutive blocks with the same width and kernel: indices first..first+count-1."""

    first: int
    count: int
    width: int
    kernel: int

    def describe(self) -> str:
        span = f"block {self.first}" if self.count == 1 else f"blocks {self.first}-{self.first + self.count - 1}"
        where = "resolution 1 or 2" if self.kernel == 1 else "resolution > 2"
        return f"{span}: {self.count} x width {self.width}, {self.kernel}x{self.kernel} ({where})"


@dataclass
class CheckpointInfo:
    parameters: int
    tensors: int
    width: int | None
    zdim: int | None
    num_mixtures: int | None
    bias_resolutions: list[int]
    bias_widths: list[int]
    encoder_blocks: list[tuple]  # (width, kernel) per block
    decoder_layers: list[tuple]  # (width, kernel) per layer
    notes: list[str] = field(default_factory=list)

    @property
    def encoder_runs(self) -> list[BlockRun]:
        return _runs(self.encoder_blocks)

    @property
    def decoder_runs(self) -> list[BlockRun]:
        return _runs(self.decoder_layers)

    def to_dict(self) -> dict:
        return {
            "parameters": self.parameters,
            "tensors": self.tensors,
            "width": self.width,
            "zdim": self.zdim,
            "num_mixtures": self.num_mixtures,
            "bias_xs": dict(zip(self.bias_resolutions, self.bias_widths, strict=False)),
            "encoder": {"blocks": len(self.encoder_blocks), "runs": [vars(r) for r in self.encoder_runs]},
            "decoder": {"layers": len(self.decoder_layers), "runs": [vars(r) for r in self.decoder_runs]},
            "notes": self.notes,
        }

    def describe(self) -> str:
        lines = [
            f"parameters: {self.parameters:,} in {self.tensors} tensors",
            f"width (image resolution): {self.width}",
            f"zdim: {self.zdim}",
            f"num_mixtures: {self.num_mixtures}",
            "bias_xs (learned starting states), resolution:width: "
            + ", ".join(f"{r}:{w}" for r, w in zip(self.bias_resolutions, self.bias_widths, strict=False)),
            f"encoder: {len(self.encoder_blocks)} blocks",
        ]
        lines += [f"  {r.describe()}" for r in self.encoder_runs]
        lines.append(f"decoder: {len(self.decoder_layers)} stochastic layers")
        lines += [f"  {r.describe()}" for r in self.decoder_runs]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _runs(blocks: list[tuple]) -> list[BlockRun]:
    runs: list[BlockRun] = []
    for i, (w, k) in enumerate(blocks):
        if runs and (runs[-1].width, runs[-1].kernel) == (w, k):
            runs[-1].count += 1
        else:
            runs.append(BlockRun(i, 1, w, k))
    return runs


def _indexed(state: dict[str, torch.Tensor], prefix: str, suffix: str) -> list[str]:
    """The keys PREFIX{i}.SUFFIX of `state`, in the order of i."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\." + re.escape(suffix) + "$")
    found = {int(m.group(1)): k for k in state for m in [pattern.match(k)] if m}
    return [found[i] for i in sorted(found)]


def inspect_checkpoint(path_or_state: str | os.PathLike | dict[str, torch.Tensor]) -> CheckpointInfo:
    """The structure a checkpoint's tensor shapes determine (`.th`, `.safetensors`, or a state dict)."""
    state = strip_ddp_prefix(path_or_state) if isinstance(path_or_state, dict) else read_checkpoint(path_or_state)
    notes = []

    def conv(k) -> tuple | None:  # a 4-d (out, in, kh, kw) weight, or None (noted) for anything else
        value = state.get(k)
        if value is None:
            return None
        if value.ndim != 4:
            notes.append(f"{k} has shape {tuple(value.shape)}, not a 4-d convolution or state: ignored")
            return None
        return tuple(value.shape)

    enc = [
        (c1[1], c2[-1])
        for c1, c2 in zip(
            (conv(k) for k in _indexed(state, ENCODER_BLOCKS, "c1.weight")),
            (conv(k) for k in _indexed(state, ENCODER_BLOCKS, "c2.weight")),
            strict=False,
        )
        if c1 and c2
    ]
    dec = [
        (c1[1], c2[-1])
        for c1, c2 in zip(
            (conv(k) for k in _indexed(state, DECODER_LAYERS, "resnet.c1.weight")),
            (conv(k) for k in _indexed(state, DECODER_LAYERS, "resnet.c2.weight")),
            strict=False,
        )
        if c1 and c2
    ]
    z_proj = [s for s in (conv(k) for k in _indexed(state, DECODER_LAYERS, "z_proj.weight")) if s]
    biases = [
        s
        for s in (
            conv(k)
            for k in sorted(
                (k for k in state if re.match(re.escape(BIAS_XS) + r"\d+$", k)), key=lambda k: int(k.rsplit(".", 1)[1])
            )
        )
        if s
    ]
    out_conv = conv(OUT_CONV)
    gain = conv(GAIN)
    if not enc:
        notes.append("no encoder tensors found")
    if not dec:
        notes.append("no decoder layers found")
    if out_conv and out_conv[0] % 10:
        notes.append(f"out_conv has {out_conv[0]} channels, not a multiple of 10: not a mixture-of-logistics head")
    notes.append(
        "down-sampling points and the resolution of runs of 3x3 blocks are not visible in the shapes; "
        "bias_xs gives the decoder's resolutions up to no_bias_above"
    )
    return CheckpointInfo(
        parameters=sum(v.numel() for v in state.values()),
        tensors=len(state),
        width=gain[1] if gain else None,
        zdim=z_proj[0][1] if z_proj else None,
        num_mixtures=out_conv[0] // 10 if out_conv else None,
        bias_resolutions=[b[2] for b in biases],
        bias_widths=[b[1] for b in biases],
        encoder_blocks=enc,
        decoder_layers=dec,
        notes=notes,
    )


def _expected(config: VDVAEConfig) -> tuple:
    enc = [(config.width_at(b.resolution), kernel_size(b.resolution)) for b in config.encoder_blocks]
    dec = [(config.width_at(b.resolution), kernel_size(b.resolution)) for b in config.decoder_blocks]
    return enc, dec


def compare_with_config(info: CheckpointInfo, config: VDVAEConfig) -> list[str]:
    """Where the file and `config` differ: the first differing encoder block and decoder layer, and the
    global fields. Empty when the shapes agree."""
    enc, dec = _expected(config)
    diffs = []
    for what, ours, theirs in (
        ("encoder block", info.encoder_blocks, enc),
        ("decoder layer", info.decoder_layers, dec),
    ):
        for i in range(max(len(ours), len(theirs))):
            a = ours[i] if i < len(ours) else None
            b = theirs[i] if i < len(theirs) else None
            if a != b:
                fmt = lambda t: "nothing" if t is None else f"width {t[0]}, {t[1]}x{t[1]}"  # noqa: E731
                diffs.append(
                    f"{what} {i}: file has {fmt(a)}, config expects {fmt(b)} "
                    f"(file: {len(ours)} {what}s, config: {len(theirs)})"
                )
                break
    for name, found, expected in (
        ("width", info.width, config.width),
        ("zdim", info.zdim, config.zdim),
        ("num_mixtures", info.num_mixtures, config.num_mixtures),
        ("bias_xs resolutions", info.bias_resolutions, config.bias_resolutions),
    ):
        if found != expected:
            diffs.append(f"{name}: file has {found}, config expects {expected}")
    return diffs
