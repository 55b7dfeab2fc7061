"""Restoration with the prior, measured: inpainting, super-resolution and denoising on held-out images, PnP-HVAE
and the encode-decode alternative against the plain baselines (mean fill, bicubic, the noisy image).

    python examples/photo_crops.py crops/ --size 32 -n 500 --tiny-config tiny.json
    vdvae-zoo finetune --config tiny.json --data crops/ --out run --steps 2000 --batch-size 16
    python examples/photo_crops.py held/ --size 32 -n 40 --seed 123
    python benchmarks/restore_bench.py --model run --images held/ -n 8 --json benchmarks/results_restore_cpu.json

Per task and method: PSNR (dB) and SSIM against the clean image, the negative ELBO of the result under the model
(bits per dim, image i seeded by image_seed(0, i)), and seconds per image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vdvae_zoo  # noqa: E402
from vdvae_zoo.compute.batching import image_seed  # noqa: E402
from vdvae_zoo.data.images import find_images, load_images  # noqa: E402
from vdvae_zoo.restore import Denoising, Downsampling, Inpainting, psnr, restore, ssim  # noqa: E402


def tasks(size: int):
    mask = np.ones((size, size), np.float32)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 0  # the centre quarter missing
    return {
        "inpainting (centre quarter missing)": Inpainting(torch.tensor(mask)),
        "super-resolution x2": Downsampling(2),
        "super-resolution x4": Downsampling(4),
        "denoising (sigma 25/255)": Denoising(25 / 255),
    }


def degrade(op, clean: np.ndarray, seed: int = 0) -> np.ndarray:
    x = torch.tensor(clean).float() / 255
    y = op.forward(x)
    if isinstance(op, Denoising):
        y = y + torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)) * op.sigma
    return y.clamp(0, 1).numpy()


def scores(model, restored: np.ndarray, clean: np.ndarray) -> dict:
    bpd = model.likelihood(restored, seeds=[image_seed(0, i) for i in range(len(restored))]).bpd.numpy()
    return {
        "psnr": float(np.mean([psnr(a, b) for a, b in zip(restored, clean, strict=False)])),
        "ssim": float(np.mean([ssim(a, b) for a, b in zip(restored, clean, strict=False)])),
        "neg_elbo_bpd": float(bpd.mean()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("-n", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--temperatures", default="1.0,0.8")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = vdvae_zoo.load(args.model, device="cpu")
    size = model.config.image_size
    clean, _, _ = load_images(find_images([args.images])[: args.n], size=size)
    rows = []
    for task, op in tasks(size).items():
        observed = degrade(op, clean)
        start = time.perf_counter()
        initial = (op.initial(torch.tensor(observed)).clamp(0, 1) * 255).round().byte().numpy()
        plain = "mean fill" if isinstance(op, Inpainting) else "bicubic" if isinstance(op, Downsampling) else "noisy"
        rows.append(
            dict(
                task=task,
                method=f"baseline: {plain}",
                **scores(model, initial, clean),
                seconds_per_image=(time.perf_counter() - start) / len(clean),
            )
        )
        for t in [float(v) for v in args.temperatures.split(",")]:
            result = restore(model, observed, op, steps=args.steps, temperature=t)
            rows.append(
                dict(
                    task=task,
                    method=f"pnp-hvae T={t:g}, {args.steps} steps",
                    **scores(model, result.images, clean),
                    seconds_per_image=result.seconds_per_image,
                )
            )
        for keep in (model.num_layers // 2, model.num_layers - 2):
            result = restore(model, observed, op, method="encode-decode", keep=keep, temperature=0.0)
            rows.append(
                dict(
                    task=task,
                    method=f"encode-decode keep {keep} of {model.num_layers}, T=0",
                    **scores(model, result.images, clean),
                    seconds_per_image=result.seconds_per_image,
                )
            )
        for r in rows[-(2 + len(args.temperatures.split(",")) + 1) :]:
            print(
                f"{r['task']:<38} {r['method']:<34} PSNR {r['psnr']:6.2f}  SSIM {r['ssim']:.3f}  "
                f"-ELBO {r['neg_elbo_bpd']:.3f} bpd  {r['seconds_per_image']:.2f} s",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"model": args.model, "images": len(clean), "rows": rows}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
