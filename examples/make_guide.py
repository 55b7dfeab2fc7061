"""Regenerate the pictures of docs/guide.md from a model: samples at several temperatures, Figure-4
reconstructions, a latent interpolation and the bits-per-layer chart.

    python examples/make_guide.py ffhq256 --images my_faces/ --out docs/images    # with a released model
    python examples/make_guide.py runs/tiny --out docs/images                       # with a fine-tuned folder
    python examples/make_guide.py --tiny --out /tmp/guide                           # random-init, for CI
"""

import argparse
import json

import numpy as np
import torch
from _common import add_model_arguments, get_model, output_path, read_images
from PIL import Image

import vdvae_zoo
from vdvae_zoo.data.images import make_grid, save_png
from vdvae_zoo.nn.inputs import figure4_keeps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument(
        "--images",
        nargs="*",
        default=[],
        help="Images for reconstructions and the chart (default: scikit-image's sample photos).",
    )
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--samples", type=int, default=8, help="Posterior draws for the importance-weighted bound.")
    parser.add_argument(
        "--zoom",
        type=int,
        default=None,
        help="Enlarge the pictures this many times (default: up to about 128 pixels per image).",
    )
    args = parser.parse_args()
    model = get_model(args)
    zoom = args.zoom or max(1, 128 // model.config.image_size)

    def save(grid, name):
        picture = grid.resize((grid.width * zoom, grid.height * zoom), Image.NEAREST) if zoom > 1 else grid
        save_png(picture, out / name)

    out = output_path(args.out, "docs/images", args.overwrite, folder=True)
    size, L = model.config.image_size, model.num_layers
    images = read_images(args.images, size, n_default=6)

    rows = []
    temperatures = [1.0, 0.9, 0.8, 0.6, 0.4]
    for t in temperatures:
        torch.manual_seed(args.seed)
        rows.append(model.sample(8, temperature=t).numpy())
    save(make_grid(np.concatenate(rows), ncols=8), "samples_by_temperature.png")

    keeps = figure4_keeps(L)
    torch.manual_seed(args.seed)
    rows = model.reconstruct(images[:4], keep=keeps, temperature=0.1).numpy()
    grid = np.concatenate([images[:4, None], rows], axis=1).reshape(-1, size, size, 3)
    save(make_grid(grid, ncols=len(keeps) + 1), "reconstructions.png")

    torch.manual_seed(args.seed)
    path = model.interpolate(images[0], images[1], 8, temperature=0.1).numpy()
    save(make_grid(path, ncols=8), "interpolation.png")

    torch.manual_seed(args.seed)
    result = model.likelihood(images, n_samples=args.samples)
    vdvae_zoo.kl_chart(
        result.kl,
        model.layer_resolutions,
        out / "bits_per_layer.png",
        title=f"bits per layer, mean of {len(images)} photos",
    )
    summary = {
        "model": args.model or "tiny (random init)",
        "images": len(images),
        "bpd": result.bpd.mean().item(),
        "distortion_bpd": result.distortion_bpd.mean().item(),
        "rate_bpd": result.rate_bpd.mean().item(),
        "bpd_iw": result.bpd_iw.mean().item() if result.bpd_iw is not None else None,
        "samples": args.samples,
        "reconstruction_keep": keeps,
        "temperatures": temperatures,
        "bits_per_resolution": vdvae_zoo.bits_per_resolution(result.kl, model.layer_resolutions),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"wrote samples_by_temperature.png, reconstructions.png, interpolation.png, bits_per_layer.png, "
        f"summary.json to {out}"
    )


if __name__ == "__main__":
    main()
