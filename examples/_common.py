"""What the example scripts share: choosing a model (a released name, a path, or `--tiny`) and finding images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

import vdvae_zoo
import vdvae_zoo.images
from vdvae_zoo.images import find_images, load_images

TINY_CONFIG = dict(image_size=32, width=32, zdim=8, num_mixtures=4,
                   enc_blocks="32x2,32d2,16x2,16d2,8x2,8d2,4x2,4d4,1x2",
                   dec_blocks="1x1,4m1,4x2,8m4,8x2,16m8,16x2,32m16,32x2")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None,
                        help="A released model name (vdvae-zoo list), a save_pretrained folder, or a checkpoint.")
    parser.add_argument("--tiny", action="store_true",
                        help="Use a small random-init model instead (runs in seconds on a CPU; pictures are noise).")
    parser.add_argument("--config", default=None, help="Architecture of an original .th checkpoint.")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when present)")
    parser.add_argument("--dtype", default="float32", help="Compute precision: float32 or bfloat16.")
    parser.add_argument("--seed", type=int, default=0)


def get_model(args: argparse.Namespace) -> vdvae_zoo.VDVAE:
    if args.tiny:
        if args.model is not None and isinstance(getattr(args, "images", None), list):
            args.images.insert(0, args.model)  # `--tiny FOLDER`: the first positional was an image path
            args.model = None
        torch.manual_seed(args.seed)
        return vdvae_zoo.VDVAE(vdvae_zoo.VDVAEConfig.from_dict(TINY_CONFIG)).eval().optimize(dtype=args.dtype)
    if args.model is None:
        raise SystemExit("give a model (e.g. cifar10, or a folder) or --tiny")
    try:
        return vdvae_zoo.load(args.model, config=args.config, device=args.device, dtype=args.dtype)
    except (OSError, ValueError) as e:  # offline, unknown name, bad file: one line, no traceback
        raise SystemExit(f"error: {e}") from None


def sample_photos(size: int, n: int = 4) -> np.ndarray:
    """Real photos bundled with scikit-image, centre-cropped to size x size (for demos without image files)."""
    try:
        return np.stack(vdvae_zoo.images.sample_photos(n, size))
    except ImportError as e:
        raise SystemExit(f"no images given, and {e}; or pass image files") from None


def read_images(paths: List[str], size: int, n_default: int = 4, resize: bool = True) -> np.ndarray:
    """uint8 NHWC images from files/folders at the model's size, or bundled photos when `paths` is empty."""
    if not paths:
        return sample_photos(size, n_default)
    images, kept, skipped = load_images(find_images(paths), size=size, resize="center-crop" if resize else None)
    for path, why in skipped:
        print(f"skipped {path}: {why}")
    if not len(kept):
        raise SystemExit(f"no readable image in {', '.join(paths)}")
    return images


def output_path(path: Optional[str], default: str) -> Path:
    out = Path(path or default)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out
