"""The paper's Figure 4: reconstructions keeping the latents of the first k layers, the rest sampled.

python examples/reconstruction.py ffhq256 face.png --keep 1 4 16 all -t 0.1 -o fig4.png
python examples/reconstruction.py --tiny
"""

import argparse

import numpy as np
import torch
from _common import add_model_arguments, get_model, output_path, read_images

from vdvae_zoo.data.images import make_grid, save_png
from vdvae_zoo.nn.inputs import figure4_keeps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("images", nargs="*", help="Image files or folders (default: bundled sample photos).")
    parser.add_argument(
        "--keep",
        nargs="+",
        default=None,
        help="Layers kept per column ('all' for every layer); default: 1 4 16 all where they fit.",
    )
    parser.add_argument("-t", "--temperature", type=float, default=0.1, help="Temperature of the other layers.")
    parser.add_argument("-o", "--output", default=None)
    args = parser.parse_args()
    model = get_model(args)
    images = read_images(args.images, model.config.image_size, n_default=3)
    keeps = (
        figure4_keeps(model.num_layers)
        if args.keep is None
        else [model.num_layers if k == "all" else min(int(k), model.num_layers) for k in args.keep]
    )
    torch.manual_seed(args.seed)
    rows = model.reconstruct(images, keep=keeps, temperature=args.temperature).numpy()  # (N, len(keeps), H, W, 3)
    grid = np.concatenate([images[:, None], rows], axis=1).reshape(-1, *images.shape[1:])
    out = output_path(args.output, "reconstructions.png", args.overwrite)
    save_png(make_grid(grid, ncols=len(keeps) + 1), out)
    print(f"wrote {out}: columns original, then keep {', '.join(map(str, keeps))} of {model.num_layers} layers")


if __name__ == "__main__":
    main()
