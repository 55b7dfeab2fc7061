"""Bits per dim of every image in a folder, with its parts, and which layers hold the information.

python examples/bpd_folder.py cifar10 my_images/ --samples 16 --chart layers.png
python examples/bpd_folder.py --tiny               # scikit-image's sample photos, random-init tiny model
"""

import argparse

import torch
from _common import add_model_arguments, get_model, output_path, read_images

import vdvae_zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("images", nargs="*", help="Image files or folders (default: bundled sample photos).")
    parser.add_argument("--samples", type=int, default=1, help="K > 1 adds the importance-weighted bound.")
    parser.add_argument("--chart", default=None, help="Write a bar chart of bits per layer here.")
    args = parser.parse_args()
    model = get_model(args)
    images = read_images(args.images, model.config.image_size)
    torch.manual_seed(args.seed)
    result = model.likelihood(images, n_samples=args.samples)
    print(
        f"{len(images)} images: bpd {result.bpd.mean():.4f} = distortion {result.distortion_bpd.mean():.4f} "
        f"+ rate {result.rate_bpd.mean():.4f} (bits per dim)"
    )
    if result.bpd_iw is not None:
        print(f"importance-weighted bound with {args.samples} samples: {result.bpd_iw.mean():.4f} bits per dim")
    for r, bits in vdvae_zoo.bits_per_resolution(result.kl, model.layer_resolutions).items():
        print(f"  layers at {r:4d}x{r:<4d} hold {bits:10.1f} bits per image")
    if args.chart:
        out = output_path(args.chart, "layers.png", args.overwrite)
        vdvae_zoo.kl_chart(result.kl, model.layer_resolutions, out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
