"""Latent interpolation between two images: one row per number of interpolated layers.

python examples/interpolation.py ffhq256 a.png b.png --steps 8 --keep 8 all -o path.png
python examples/interpolation.py --tiny
"""

import argparse

import numpy as np
import torch
from _common import add_model_arguments, get_model, output_path, read_images

from vdvae_zoo.data.images import make_grid, save_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("images", nargs="*", help="Two image files (default: two bundled sample photos).")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--keep", nargs="+", default=["all"], help="Layers interpolated, one row each.")
    parser.add_argument("-t", "--temperature", type=float, default=0.1, help="Temperature of the other layers.")
    parser.add_argument("--mode", choices=["linear", "slerp"], default="linear")
    parser.add_argument("-o", "--output", default=None)
    args = parser.parse_args()
    model = get_model(args)
    images = read_images(args.images, model.config.image_size, n_default=2)
    if len(images) != 2:
        raise SystemExit(f"need exactly two images, got {len(images)}")
    rows = []
    for k in args.keep:
        keep = model.num_layers if k == "all" else min(int(k), model.num_layers)
        torch.manual_seed(args.seed)
        rows.append(
            model.interpolate(
                images[0], images[1], args.steps, keep=keep, temperature=args.temperature, mode=args.mode
            ).numpy()
        )
    out = output_path(args.output, "interpolation.png", args.overwrite)
    save_png(make_grid(np.concatenate(rows), ncols=args.steps), out)
    print(f"wrote {out}: {args.steps} steps, rows keep {', '.join(args.keep)}")


if __name__ == "__main__":
    main()
