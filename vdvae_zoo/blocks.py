"""The architecture's string grammar: block strings and custom widths, and the bounds a config must keep.

Block strings (read left to right):
- ``RxN``: N blocks at resolution R;
- ``RdK`` (encoder only): one block at R that average-pools by K at its end;
- ``RmS`` (decoder only): one block at R that first adds the nearest-up-sampled state of resolution S;
- ``R``: one block at R.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = [
    "BlockSpec",
    "parse_block_string",
    "parse_custom_widths",
    "kernel_size",
    "MAX_BLOCKS",
    "MAX_RESOLUTION",
    "MAX_WIDTH",
]


class BlockSpec(NamedTuple):
    """One block of a block string: its resolution, and a down-sampling rate (encoder) or mixin
    resolution (decoder), or None."""

    resolution: int
    down_rate: int | None = None
    mixin: int | None = None


_ITEM = re.compile(r"^(\d+)(?:([xdm])(\d+))?$")

#: Bounds that no sensible model reaches (the released ones: at most 1024 pixels, 512 channels, 78 layers).
#: A config.json can come from any Hub repository: these keep a hostile one from spinning or exhausting memory.
MAX_BLOCKS = 2048
MAX_RESOLUTION = 8192
MAX_WIDTH = 65536


def parse_block_string(spec: str, kind: str = "decoder") -> list[BlockSpec]:
    """Parse an encoder (``kind="encoder"``) or decoder block string into one BlockSpec per block.

    Raises ValueError naming the offending item when an item is malformed, uses ``m`` in an encoder
    or ``d`` in a decoder, or has a zero count, resolution or rate.
    """
    if kind not in ("encoder", "decoder"):
        raise ValueError(f"kind must be 'encoder' or 'decoder', got {kind!r}")
    name = "enc_blocks" if kind == "encoder" else "dec_blocks"
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{name} must be a non-empty block string such as '32x2,32d2,16x2', got {spec!r:.80}")
    if spec.count(",") >= MAX_BLOCKS:
        raise ValueError(
            f"{name} lists {spec.count(',') + 1:,} items, more than the {MAX_BLOCKS} blocks any VDVAE "
            "has (the released ones have at most 78); write runs as RxN"
        )
    blocks: list[BlockSpec] = []
    for item in spec.split(","):
        text = item.strip()
        m = _ITEM.match(text)
        if m is None:
            raise ValueError(
                f"{name}: cannot parse item {item!r} of {spec!r}; expected RxN, "
                + ("RdK" if kind == "encoder" else "RmS")
                + " or R with integers R, N, "
                + ("K" if kind == "encoder" else "S")
            )
        res, op, arg = int(m.group(1)), m.group(2), m.group(3)
        if not 0 < res <= MAX_RESOLUTION:
            raise ValueError(f"{name}: item {item!r} has resolution {res}; resolutions must be in 1..{MAX_RESOLUTION}")
        if op is None:
            if len(blocks) + 1 > MAX_BLOCKS:
                raise ValueError(f"{name}: more than {MAX_BLOCKS} blocks; no VDVAE has that many")
            blocks.append(BlockSpec(res))
            continue
        value = int(arg)
        if value <= 0:
            raise ValueError(f"{name}: item {item!r} has a zero count or rate")
        if op == "x" and len(blocks) + value > MAX_BLOCKS:
            raise ValueError(
                f"{name}: item {item!r} makes more than {MAX_BLOCKS} blocks; no VDVAE has that many "
                "(the released ones have at most 78)"
            )
        if op == "x":
            blocks.extend(BlockSpec(res) for _ in range(value))
        elif op == "d":
            if kind != "encoder":
                raise ValueError(
                    f"{name}: item {item!r} down-samples ('d'), which only encoder blocks do; "
                    "decoder blocks use RmS to mix in a lower resolution"
                )
            if value < 2 or res % value:
                raise ValueError(
                    f"{name}: item {item!r} down-samples {res} by {value}, which does not give "
                    "a whole resolution (need K >= 2 dividing R)"
                )
            blocks.append(BlockSpec(res, down_rate=value))
        else:  # "m"
            if kind != "decoder":
                raise ValueError(
                    f"{name}: item {item!r} mixes in ('m'), which only decoder blocks do; "
                    "encoder blocks use RdK to down-sample"
                )
            if value >= res or res % value:
                raise ValueError(
                    f"{name}: item {item!r} mixes resolution {value} into {res}; the mixin must be "
                    "a lower resolution that divides R"
                )
            blocks.append(BlockSpec(res, mixin=value))
    return blocks


def kernel_size(resolution: int) -> int:
    """The middle convolutions of every block are 3x3 above resolution 2 and 1x1 at resolutions 1 and 2."""
    return 3 if resolution > 2 else 1


def parse_custom_widths(spec: str) -> dict[int, int]:
    """Parse ``"R:W,R:W,..."`` into {resolution: width}. Empty string gives {}."""
    widths: dict[int, int] = {}
    if not isinstance(spec, str):
        raise ValueError(f"custom_width_str must be text such as '32:512,16:512' (or empty), got {spec!r:.80}")
    if not spec:
        return widths
    if spec.count(",") > 64:
        raise ValueError("custom_width_str names more than 64 resolutions; no VDVAE has that many")
    for item in spec.split(","):
        parts = item.strip().split(":")
        try:
            res, width = int(parts[0]), int(parts[1])
            if len(parts) != 2:
                raise ValueError
        except (ValueError, IndexError):
            raise ValueError(
                f"custom_width_str: cannot parse item {item!r} of {spec!r}; expected R:W "
                "with integer resolution R and width W"
            ) from None
        if not (0 < res <= MAX_RESOLUTION and 0 < width <= MAX_WIDTH):
            raise ValueError(
                f"custom_width_str: item {item!r} needs a resolution in 1..{MAX_RESOLUTION} and a width "
                f"in 1..{MAX_WIDTH}"
            )
        widths[res] = width
    return widths
