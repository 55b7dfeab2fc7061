"""Write a small folder of real photo crops (scikit-image's bundled images) to try fine-tuning without data.

python examples/photo_crops.py crops/ --size 32 -n 400 --tiny-config tiny.json
vdvae-zoo finetune --config tiny.json --data crops/ --out runs/tiny --steps 4000
"""

import argparse
import json
from pathlib import Path

from PIL import Image

from vdvae_zoo.data.images import photo_crops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--size", type=int, default=32, help="Side of the square crops, pixels.")
    parser.add_argument("-n", type=int, default=400, help="Number of crops.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="Write into a folder that is not empty.")
    parser.add_argument("--tiny-config", default=None, help="Also write the examples' tiny 32x32 config here (JSON).")
    args = parser.parse_args()
    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise SystemExit(f"{out} is not empty; pass --overwrite to write into it")
    out.mkdir(parents=True, exist_ok=True)
    try:
        crops = photo_crops(args.n, args.size, args.seed)  # each 2x the size up to half the photo, downscaled
    except ImportError as e:
        raise SystemExit(str(e)) from None
    for k, crop in enumerate(crops):
        Image.fromarray(crop).save(out / f"crop_{k:04d}.png")
    print(f"wrote {args.n} {args.size}x{args.size} crops to {out}")
    if args.tiny_config:
        from vdvae_zoo.config import EXAMPLE_CONFIGS

        Path(args.tiny_config).write_text(json.dumps(EXAMPLE_CONFIGS["tiny32"], indent=2) + "\n")
        print(f"wrote {args.tiny_config}")


if __name__ == "__main__":
    main()
