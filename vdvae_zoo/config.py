"""Hyper-parameters of a Very Deep VAE: the architecture, the preprocessing, and the released presets.

A model is described by data, not code: `VDVAEConfig.from_preset("ffhq256")` gives the exact
hyper-parameters the paper's authors trained with, and a `config.json` written by `to_dict()` round-trips.
The block strings' grammar and the architecture's bounds are in blocks.py.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Union

from .blocks import MAX_RESOLUTION, MAX_WIDTH, BlockSpec, parse_block_string, parse_custom_widths
from .data.files import read_small_text

__all__ = [
    "VDVAEConfig",
    "list_presets",
    "PRESETS",
    "EXAMPLE_CONFIGS",
    "resolve_config",
    "ConfigLike",
]


# Preprocessing of CIFAR-10, the default when a config does not say (docs/config.md).
_CIFAR_SHIFT = -120.63838
_CIFAR_SCALE = 1.0 / 64.16736


@dataclass
class VDVAEConfig:
    """Every hyper-parameter that determines a VDVAE's parameters and its preprocessing.

    Preprocessing, with x = uint8 pixels as float (NHWC):
    encoder input = (x * pixel_scale + shift) * scale;
    likelihood target = (x' * pixel_scale + shift_loss) * scale_loss, in [-1, 1], where x' = floor(x / 8) * 8
    when ``low_bit`` (5-bit targets, ffhq256) and x otherwise. ``pixel_scale`` is 1/255 for ffhq1024, whose
    constants the original applies to pixels in [0, 1]; 1 for every other model.
    """

    image_size: int  # the architecture: no default (a preset or config.json states it)
    width: int
    enc_blocks: str
    dec_blocks: str
    zdim: int = 16
    bottleneck_multiple: float = 0.25
    num_mixtures: int = 10
    custom_width_str: str = ""
    no_bias_above: int = 64
    image_channels: int = 3
    shift: float = _CIFAR_SHIFT
    scale: float = _CIFAR_SCALE
    shift_loss: float = -127.5
    scale_loss: float = 1.0 / 127.5
    low_bit: bool = False
    pixel_scale: float = 1.0
    #: The pixel distribution: "dmol" (the paper's discretized mixture of logistics, any channel count) or
    #: "bernoulli" (binary images: each sub-pixel 0 or 255; dmol.py).
    output: str = "dmol"
    #: The family of models this config describes (registry.py), written into every config.json.
    model_type: ClassVar[str] = "vdvae"

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------- derived
    @property
    def encoder_blocks(self) -> list[BlockSpec]:
        return parse_block_string(self.enc_blocks, "encoder")

    @property
    def decoder_blocks(self) -> list[BlockSpec]:
        return parse_block_string(self.dec_blocks, "decoder")

    def width_at(self, resolution: int) -> int:
        """Channels of the activations at `resolution`: `width` unless custom_width_str says otherwise."""
        return parse_custom_widths(self.custom_width_str).get(resolution, self.width)

    @property
    def num_layers(self) -> int:
        """Number of stochastic (decoder) layers."""
        return len(self.decoder_blocks)

    @property
    def layer_resolutions(self) -> list[int]:
        """Resolution of each stochastic (decoder) layer, top to bottom."""
        return [b.resolution for b in self.decoder_blocks]

    @property
    def bias_resolutions(self) -> list[int]:
        """Resolutions that have a learned starting state `decoder.bias_xs.{j}`, in increasing order."""
        return sorted({b.resolution for b in self.decoder_blocks if b.resolution <= self.no_bias_above})

    @property
    def dims_per_image(self) -> int:
        """H * W * C: the number of sub-pixels that per-dim quantities are divided by."""
        return self.image_size * self.image_size * self.image_channels

    # ------------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ValueError naming the bad field or block-string item if the config cannot be built."""
        for f in dataclasses.fields(self):  # types first: a config.json can hold anything
            value, kind = getattr(self, f.name), {"int": int, "float": float, "str": str, "bool": bool}[str(f.type)]
            numeric_ok = kind is float and isinstance(value, int) and not isinstance(value, bool)
            if (not isinstance(value, kind) and not numeric_ok) or (kind is not bool and isinstance(value, bool)):
                what = {int: "an integer", float: "a number", str: "text", bool: "true or false"}[kind]
                raise ValueError(f"{f.name} must be {what}, got {value!r:.60} ({type(value).__name__})")
            if kind is float and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        for name in ("image_size", "width", "zdim", "num_mixtures", "image_channels", "no_bias_above"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, bound in (
            ("image_size", MAX_RESOLUTION),
            ("width", MAX_WIDTH),
            ("zdim", MAX_WIDTH),
            ("num_mixtures", 1024),
        ):
            if getattr(self, name) > bound:
                raise ValueError(f"{name} is {getattr(self, name)}; at most {bound} is accepted")
        if not 1 <= self.image_channels <= 4:
            raise ValueError(
                f"image_channels must be 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA), got {self.image_channels}"
            )
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        if self.output == "bernoulli" and self.low_bit:
            raise ValueError("low_bit (5-bit targets) means nothing for a Bernoulli output: its pixels are 0 or 255")
        if not 0 < self.bottleneck_multiple:
            raise ValueError(f"bottleneck_multiple must be positive, got {self.bottleneck_multiple}")
        widths = parse_custom_widths(self.custom_width_str)
        width_at = lambda r: widths.get(r, self.width)  # noqa: E731
        if width_at(self.image_size) != self.width:
            raise ValueError(
                f"custom_width_str gives width {width_at(self.image_size)} at the image resolution "
                f"{self.image_size}, but width is {self.width}; they must be equal"
            )
        for res, w in sorted(widths.items()) or [(self.image_size, self.width)]:
            if int(w * self.bottleneck_multiple) < 1:
                raise ValueError(
                    f"width {w} at resolution {res} times bottleneck_multiple "
                    f"{self.bottleneck_multiple} leaves no channels in the bottleneck"
                )
        if int(self.width * self.bottleneck_multiple) < 1:
            raise ValueError(
                f"width {self.width} times bottleneck_multiple {self.bottleneck_multiple} "
                "leaves no channels in the bottleneck"
            )

        # Encoder: starts at the image resolution; each block runs at the current resolution.
        current = self.image_size
        seen = {current}
        for i, block in enumerate(self.encoder_blocks):
            if block.resolution != current:
                raise ValueError(
                    f"enc_blocks: block {i} is at resolution {block.resolution}, but the encoder is at "
                    f"{current} there (it starts at image_size={self.image_size} and only 'RdK' items "
                    "change resolution)"
                )
            if block.down_rate:
                new = current // block.down_rate
                if width_at(new) < width_at(current):
                    raise ValueError(
                        f"enc_blocks: item {current}d{block.down_rate} goes from width {width_at(current)} "
                        f"at {current} to width {width_at(new)} at {new}; widths must not shrink as "
                        "the resolution falls (custom_width_str)"
                    )
                current = new
                seen.add(current)

        # Decoder: each resolution must have an encoder activation; a mixin must already exist.
        has_state = set(self.bias_resolutions)
        for i, block in enumerate(self.decoder_blocks):
            r = block.resolution
            if r not in seen:
                raise ValueError(
                    f"dec_blocks: block {i} is at resolution {r}, which the encoder never produces "
                    f"(encoder resolutions: {sorted(seen)})"
                )
            if block.mixin is not None:
                s = block.mixin
                if s not in has_state:
                    raise ValueError(
                        f"dec_blocks: item {r}m{s} mixes in resolution {s}, which no earlier decoder block has produced"
                    )
                if width_at(s) < width_at(r):
                    raise ValueError(
                        f"dec_blocks: item {r}m{s} needs width({s}) >= width({r}), got "
                        f"{width_at(s)} < {width_at(r)} (custom_width_str)"
                    )
            has_state.add(r)
        if self.decoder_blocks[-1].resolution != self.image_size:
            raise ValueError(
                f"dec_blocks must end at the image resolution {self.image_size}, "
                f"not {self.decoder_blocks[-1].resolution}"
            )
        if self.low_bit not in (True, False):
            raise ValueError(f"low_bit must be true or false, got {self.low_bit!r}")

    # -------------------------------------------------------------------------- serialisation
    @classmethod
    def from_preset(cls, name: str) -> VDVAEConfig:
        """The exact hyper-parameters of a released model: cifar10, imagenet32, imagenet64, ffhq256, ffhq1024."""
        key = name.lower().replace("_", "").replace("-", "")
        for preset in PRESETS:
            if preset.replace("_", "") == key:
                return cls(**PRESETS[preset])
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VDVAEConfig:
        """Build from a dict with the field names of docs/config.md (as the original `hps` or our config.json).

        The original implementation's other `hps` fields (``dataset``, ``scale_encblock``, ``lr``, ...) are
        ignored; any other key is an error naming the closest field, so a misspelling (``zdims``) is never
        silently replaced by a default. A nested ``preprocess`` dict (as in golden/expected.json) is read too.
        Missing preprocessing fields default to the CIFAR-10 values.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a dict of hyper-parameters, got {type(d).__name__}")
        if d.get("model_type", cls.model_type) != cls.model_type:
            raise ValueError(f"model_type is {d['model_type']!r}: this is not a {cls.model_type} config")
        d = {k: v for k, v in d.items() if k != "model_type"}
        names = {f.name for f in dataclasses.fields(cls)}
        merged = dict(d.get("config", {})) if isinstance(d.get("config"), dict) else {}
        merged.update(d)
        if isinstance(d.get("preprocess"), dict):
            merged.update(d["preprocess"])
        unknown = sorted(set(merged) - names - ORIGINAL_HPS_FIELDS - {"config", "preprocess"})
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(names), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown config field {unknown[0]!r}{hint}; the fields are {', '.join(sorted(names))}")
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in merged]
        if missing:
            raise ValueError(
                f"a config needs {', '.join(missing)} (the architecture); give them, or start from a "
                "preset (VDVAEConfig.from_preset)"
            )
        return cls(**{k: v for k, v in merged.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """The hyper-parameters, with `model_type` first: what config.json holds."""
        return {"model_type": self.model_type, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> VDVAEConfig:
        """Parse a JSON string, or read a `config.json` file (errors name the file)."""
        text, where = str(text_or_path), "config"
        if not text.lstrip().startswith(("{", "[")):
            shown = text if len(text) <= 200 else text[:200] + "..."
            where = f"config file {shown}"
            try:
                text = read_small_text(text_or_path, what="config file")
            except ValueError as e:  # not a regular file, too large, not UTF-8
                raise ValueError(str(e)) from None
            except OSError as e:
                raise ValueError(f"cannot read {where}: {getattr(e, 'strerror', None) or e}") from None
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} is not valid JSON ({e})") from None
        except RecursionError:
            raise ValueError(f"{where} is nested too deeply to be a config") from None
        except ValueError as e:
            if where == "config":
                raise
            raise ValueError(f"{where}: {e}") from None


#: The output distributions a config may name (`VDVAEConfig.output`).
OUTPUTS = ("dmol", "bernoulli")

#: Fields of the original implementation's `hps` that are not architecture: accepted and ignored by `from_dict`.
ORIGINAL_HPS_FIELDS = frozenset(
    """
    dataset desc hparam_sets port save_dir data_root logdir restore_path restore_ema_path restore_log_path
    restore_optimizer_path scale_encblock test_eval warmup_iters grad_clip skip_threshold lr lr_prior wd wd_prior
    num_epochs n_batch adam_beta1 adam_beta2 ema_rate temperature iters_per_ckpt iters_per_print iters_per_save
    iters_per_images epochs_per_eval epochs_per_probe epochs_per_eval_save num_images_visualize
    num_variables_visualize num_temperatures_visualize seed local_rank mpi_size rank""".split()
)

_8BIT_LOSS = dict(shift_loss=-127.5, scale_loss=1.0 / 127.5)

PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": dict(
        image_size=32,
        width=384,
        enc_blocks="32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3",
        dec_blocks="1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21",
        shift=_CIFAR_SHIFT,
        scale=_CIFAR_SCALE,
        **_8BIT_LOSS,
    ),
    "imagenet32": dict(
        image_size=32,
        width=512,
        enc_blocks="32x15,32d2,16x9,16d2,8x8,8d2,4x6,4d4,1x6",
        dec_blocks="1x2,4m1,4x4,8m4,8x9,16m8,16x19,32m16,32x40",
        shift=-116.2373,
        scale=1.0 / 69.37404,
        **_8BIT_LOSS,
    ),
    "imagenet64": dict(
        image_size=64,
        width=512,
        enc_blocks="64x11,64d2,32x20,32d2,16x9,16d2,8x8,8d2,4x7,4d4,1x5",
        dec_blocks="1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12",
        shift=-115.92961967,
        scale=1.0 / 69.37404,
        **_8BIT_LOSS,
    ),
    "ffhq256": dict(
        image_size=256,
        width=512,
        enc_blocks="256x3,256d2,128x8,128d2,64x12,64d2,32x17,32d2,16x7,16d2,8x5,8d2,4x5,4d4,1x4",
        dec_blocks="1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x21,64m32,64x13,128m64,128x7,256m128",
        shift=-112.8666757481,
        scale=1.0 / 69.84780273,
        low_bit=True,
        **_8BIT_LOSS,
    ),
    "ffhq1024": dict(
        image_size=1024,
        width=16,
        num_mixtures=2,
        custom_width_str="512:32,256:64,128:512,64:512,32:512,16:512,8:512,4:512,1:512",
        enc_blocks="1024x1,1024d2,512x3,512d2,256x5,256d2,128x7,128d2,64x10,64d2,32x14,32d2,16x7,16d2,8x5,8d2,"
        "4x5,4d4,1x4",
        dec_blocks="1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x20,64m32,64x14,128m64,128x7,256m128,256x2,512m256,1024m512",
        # The original applies these to pixels scaled to [0, 1]; pixel_scale does that scaling.
        shift=-0.4387,
        scale=1.0 / 0.2743,
        shift_loss=-0.5,
        scale_loss=2.0,
        pixel_scale=1.0 / 255.0,
    ),
}

#: Small architectures to start from (not released models): `resolve_config("tiny32")`, `vdvae-zoo new tiny32`.
#: tiny32 (32x32, 139k parameters) trains from scratch on a CPU in minutes (docs/guide.md).
EXAMPLE_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny32": dict(
        image_size=32,
        width=32,
        zdim=8,
        num_mixtures=4,
        enc_blocks="32x2,32d2,16x2,16d2,8x2,8d2,4x2,4d4,1x2",
        dec_blocks="1x1,4m1,4x2,8m4,8x2,16m8,16x2,32m16,32x2",
    ),
}


def list_presets() -> list[str]:
    """Names of the architecture presets (the released models' hyper-parameters)."""
    return list(PRESETS)


ConfigLike = Union[None, str, dict[str, Any], VDVAEConfig, "os.PathLike[str]"]


def resolve_config(config: ConfigLike) -> VDVAEConfig:
    """A VDVAEConfig from a preset name, a dict, a VDVAEConfig or the path of a config.json."""
    if isinstance(config, VDVAEConfig):
        return config
    if isinstance(config, dict):
        return VDVAEConfig.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        text = os.fspath(config)
        if Path(text).exists():  # from_json refuses what is not a regular file (a FIFO would block)
            return VDVAEConfig.from_json(Path(text))
        if text.endswith(".json") or os.sep in text:
            raise FileNotFoundError(f"config file {text} does not exist")
        if text in EXAMPLE_CONFIGS:
            return VDVAEConfig.from_dict(EXAMPLE_CONFIGS[text])
        try:
            return VDVAEConfig.from_preset(text)
        except ValueError:
            raise ValueError(
                f"unknown config {text!r}: give a preset ({', '.join(PRESETS)}), an example config "
                f"({', '.join(EXAMPLE_CONFIGS)}) or the path of a config.json"
            ) from None
    raise ValueError(
        "config must be a preset name (" + ", ".join(PRESETS) + "), a dict, a VDVAEConfig or the "
        f"path of a config.json; got {type(config).__name__}"
    )
