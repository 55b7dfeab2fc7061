"""What the example scripts share: choosing a model (a released name, a path, or `--tiny`) and finding images."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import vdvae_zoo
import vdvae_zoo.data.images
from vdvae_zoo.config import resolve_config
from vdvae_zoo.data.images import find_images, load_images


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help="A released model name (vdvae-zoo list), a save_pretrained folder, or a checkpoint.",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="Use a small random-init model instead (runs in seconds on a CPU; pictures are noise).",
    )
    parser.add_argument("--config", default=None, help="Architecture of an original .th checkpoint.")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when present)")
    parser.add_argument("--dtype", default="float32", help="Compute precision: float32 or bfloat16.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="Replace output files that exist.")


def get_model(args: argparse.Namespace) -> vdvae_zoo.VDVAE:
    if args.tiny:
        if args.model is not None and isinstance(getattr(args, "images", None), list):
            args.images.insert(0, args.model)  # `--tiny FOLDER`: the first positional was an image path
            args.model = None
        torch.manual_seed(args.seed)
        return vdvae_zoo.VDVAE(resolve_config("tiny32")).eval().optimize(dtype=args.dtype)
    if args.model is None:
        raise SystemExit("give a model (e.g. cifar10, or a folder) or --tiny")
    try:
        return vdvae_zoo.load(args.model, config=args.config, device=args.device, dtype=args.dtype)
    except (OSError, ValueError) as e:  # offline, unknown name, bad file: one line, no traceback
        raise SystemExit(f"error: {e}") from None


def sample_photos(size: int, n: int = 4) -> np.ndarray:
    """Real photos bundled with scikit-image, centre-cropped to size x size (for demos without image files)."""
    try:
        return np.stack(vdvae_zoo.data.images.sample_photos(n, size))
    except ImportError as e:
        raise SystemExit(f"no images given, and {e}; or pass image files") from None


def read_images(paths: list[str], size: int, n_default: int = 4, resize: bool = True) -> np.ndarray:
    """uint8 NHWC images from files/folders at the model's size, or bundled photos when `paths` is empty."""
    if not paths:
        return sample_photos(size, n_default)
    images, kept, skipped = load_images(find_images(paths), size=size, resize="center-crop" if resize else None)
    for path, why in skipped:
        print(f"skipped {path}: {why}")
    if not len(kept):
        raise SystemExit(f"no readable image in {', '.join(paths)}")
    return images


def output_path(path: str | None, default: str, overwrite: bool, folder: bool = False) -> Path:
    """Where to write; an existing file (or non-empty folder) is refused unless --overwrite."""
    out = Path(path or default)
    exists = out.exists() and (not folder or any(out.iterdir()))
    if exists and not overwrite:
        raise SystemExit(f"{out} exists; pass --overwrite to replace {'what is in it' if folder else 'it'}")
    (out if folder else out.parent).mkdir(parents=True, exist_ok=True)
    return out
