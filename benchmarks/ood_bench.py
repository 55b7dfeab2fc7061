"""Out-of-distribution detection, measured: the ELBO against Havtorn et al.'s LLR^{>k} on a model our trainer
trains on this CPU, with OOD sets users meet.

    python benchmarks/ood_bench.py --json benchmarks/results_ood_cpu.json --roc docs/images/ood_roc.png

Model: the tiny32 example config trained from scratch (default options, 600 steps) on 450 photo crops of the
scikit-image sample photos. In-distribution: 200 held-out crops of the same photos. OOD sets (200 images each):
uniform noise; flat colours; the held-out crops blurred (Gaussian, radius 1.5); the held-out crops inverted;
crops of grey-level textures (scikit-image's grass, gravel and brick) that the training photos do not show.
Scores for k = 1, 3, 6 (the 32x32 layer nearest the pixels; all 32x32 layers; the 16x16 and 32x32 layers).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vdvae_zoo  # noqa: E402
from vdvae_zoo.data.images import photo_crops  # noqa: E402
from vdvae_zoo.data.plots import roc_chart  # noqa: E402
from vdvae_zoo.scoring.ood import evaluate_ood, roc_points  # noqa: E402
from vdvae_zoo.training.trainer import Trainer, TrainOptions  # noqa: E402


def train(folder: Path, steps: int) -> Path:
    (folder / "train").mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(photo_crops(450, 32, seed=1)):
        Image.fromarray(im).save(folder / "train" / f"{i:03d}.png")
    Trainer(
        TrainOptions(
            data=str(folder / "train"),
            out=str(folder / "run"),
            config="tiny32",
            steps=steps,
            val_fraction=0.0,
            val_every=0,
            save_every=0,
            sample_every=0,
            device="cpu",
        )
    ).train()
    return folder / "run"


def textures(n: int, size: int, seed: int) -> np.ndarray:
    import skimage.data

    rng = np.random.default_rng(seed)
    sources = [getattr(skimage.data, name)() for name in ("grass", "gravel", "brick")]
    out = []
    for k in range(n):
        src = sources[k % len(sources)]
        side = int(rng.integers(2 * size, min(src.shape) // 2))
        y, x = int(rng.integers(0, src.shape[0] - side)), int(rng.integers(0, src.shape[1] - side))
        crop = Image.fromarray(src[y : y + side, x : x + side]).resize((size, size), Image.BICUBIC).convert("RGB")
        out.append(np.asarray(crop))
    return np.stack(out)


def ood_sets(n: int, size: int) -> dict:
    rng = np.random.default_rng(7)
    held_out = np.stack(photo_crops(n, size, seed=99))
    flat = np.repeat(np.repeat(rng.integers(0, 256, (n, 1, 1, 3), dtype=np.uint8), size, axis=1), size, axis=2)
    blurred = np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(1.5))) for im in held_out])
    return {
        "in": held_out,
        "noise": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        "flat": flat,
        "blurred": blurred,
        "inverted": 255 - held_out,
        "textures": textures(n, size, seed=3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="A trained model (default: train one, as described above).")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--ks", default="1,3,6")
    parser.add_argument(
        "--prior-temperature",
        type=float,
        default=0.0,
        help="The replaced layers: 0 their prior's mean (Havtorn et al.), 1 a prior sample.",
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--roc", default=None, help="ROC curves of the 'flat' set.")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    model_path = args.model or train(tmp, args.steps)
    model = vdvae_zoo.load(model_path, device="cpu")
    ks = tuple(int(k) for k in args.ks.split(","))
    data = ood_sets(args.images, model.config.image_size)
    for name, images in data.items():
        np.save(tmp / f"{name}.npy", images)
    start = time.perf_counter()
    report, tables = evaluate_ood(
        model,
        tmp / "in.npy",
        [tmp / f"{n}.npy" for n in data if n != "in"],
        ks,
        prior_temperature=args.prior_temperature,
        progress=False,
    )
    seconds = time.perf_counter() - start
    for line in report.lines():
        print(line)
    result = {
        "model": str(model_path),
        "steps": args.steps,
        "images_per_set": args.images,
        "ks": list(ks),
        "prior_temperature": args.prior_temperature,
        "seconds": seconds,
        "in": report.in_set,
        "sets": report.sets,
        "mean_scores": {
            name: {c: float(np.mean(v)) for c, v in t.columns.items() if c != "index"} for name, t in tables.items()
        },
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.roc:
        flat_only = type(report)(
            report.model, report.options, report.in_set, [s for s in report.sets if s["name"] == "flat"]
        )
        roc_chart(roc_points(flat_only, tables), args.roc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
