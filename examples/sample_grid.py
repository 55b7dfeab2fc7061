"""Sample a grid of images from a VDVAE at one or several temperatures.

python examples/sample_grid.py ffhq256 -n 8 -t 1.0 0.8 0.6 -o samples.png   # one row per temperature
python examples/sample_grid.py --tiny -o tiny.png                            # random-init tiny model
"""

import argparse

import numpy as np
import torch
from _common import add_model_arguments, get_model, output_path

from vdvae_zoo.data.images import make_grid, save_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("-n", type=int, default=8, help="Images per temperature.")
    parser.add_argument("-t", "--temperature", type=float, nargs="+", default=[1.0, 0.8, 0.6])
    parser.add_argument("-o", "--output", default=None)
    args = parser.parse_args()
    model = get_model(args)
    rows = []
    for t in args.temperature:
        torch.manual_seed(args.seed)  # the same noise at each temperature: rows differ by temperature only
        rows.append(model.sample(args.n, temperature=t).numpy())
    out = output_path(args.output, "samples.png", args.overwrite)
    save_png(make_grid(np.concatenate(rows), ncols=args.n), out)
    print(f"wrote {out}: rows at temperatures {', '.join(map(str, args.temperature))}")


if __name__ == "__main__":
    main()
