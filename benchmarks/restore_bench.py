"""Restoration with the prior, measured against the classical methods a user would run instead (scikit-image and
Pillow): biharmonic inpainting; Gaussian blur, total variation (Chambolle) and non-local means denoising; bicubic
and Lanczos upscaling. PnP-HVAE's settings (temperature schedule, decoder_std, the observation's noise for
inpainting) are chosen on a tuning set and reported on other images; each classical method's one parameter is
chosen the same way, on the same tuning set (an oracle choice that favours the baselines as much as ours).

    python examples/photo_crops.py crops/ --size 32 -n 2000 --tiny-config tiny.json
    vdvae-zoo finetune --config tiny.json --data crops/ --out run --steps 2500 --batch-size 16 --hflip
    python examples/photo_crops.py held/ --size 32 -n 64 --seed 123
    python benchmarks/restore_bench.py --model run --images held/ --tune 16 --test 32 \\
        --json benchmarks/results_restore_cpu.json

Needs scikit-image (`pip install scikit-image`). Per task and method: PSNR (dB) and SSIM against the clean image on
the test images, and seconds per image (2 CPU cores).
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
from vdvae_zoo.data.images import find_images, load_images  # noqa: E402
from vdvae_zoo.nn.inputs import LinearTemperature  # noqa: E402
from vdvae_zoo.restore import Denoising, Downsampling, Inpainting, psnr, restore, ssim  # noqa: E402

NOISE = 25 / 255  # denoising's noise


def centre_mask(size: int) -> np.ndarray:
    mask = np.ones((size, size), np.float32)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 0  # the centre quarter missing
    return mask


def observe(task: str, clean: np.ndarray, size: int, seed: int = 0) -> tuple[np.ndarray, object]:
    """The degraded images (float in [0, 1]) and the operator that made them."""
    x = torch.tensor(clean).float() / 255
    if task == "inpainting":
        op = Inpainting(torch.tensor(centre_mask(size)))
        return op.forward(x).numpy(), op
    if task.startswith("x"):
        op = Downsampling(int(task[1:]))
        return op.forward(x).numpy(), op
    y = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * NOISE
    return y.clamp(0, 1).numpy(), Denoising(NOISE)


# ------------------------------------------------------------------------------------------ classical methods
def classical(task: str, size: int) -> dict:
    """name -> (parameter grid, function(observed float (H, W, C), parameter) -> float image)."""
    from PIL import Image
    from skimage.filters import gaussian
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, inpaint_biharmonic

    if task == "inpainting":
        missing = centre_mask(size) == 0
        return {
            "biharmonic (skimage)": ([None], lambda y, p: inpaint_biharmonic(y, missing, channel_axis=-1)),
        }
    if task.startswith("x"):

        def pil(mode):
            def up(y, p):
                img = Image.fromarray(
                    (y * 255).round().astype(np.uint8).squeeze(-1)
                    if y.shape[-1] == 1
                    else (y * 255).round().astype(np.uint8)
                )
                out = np.asarray(img.resize((size, size), mode), np.float32) / 255
                return out[..., None] if out.ndim == 2 else out

            return up

        return {
            "bicubic (Pillow)": ([None], pil(Image.BICUBIC)),
            "Lanczos (Pillow)": ([None], pil(Image.LANCZOS)),
        }
    return {
        "Gaussian blur (skimage)": ([0.5, 0.7, 1.0, 1.3], lambda y, p: gaussian(y, sigma=p, channel_axis=-1)),
        "total variation, Chambolle (skimage)": (
            [0.04, 0.06, 0.08, 0.1, 0.14],
            lambda y, p: denoise_tv_chambolle(y, weight=p, channel_axis=-1),
        ),
        "non-local means (skimage)": (
            [0.6, 0.8, 1.0, 1.2],
            lambda y, p: denoise_nl_means(
                y, h=p * NOISE, sigma=NOISE, patch_size=5, patch_distance=6, fast_mode=True, channel_axis=-1
            ),
        ),
    }


def to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def measure(images: np.ndarray, clean: np.ndarray) -> dict:
    return {
        "psnr": float(np.mean([psnr(a, b) for a, b in zip(images, clean, strict=True)])),
        "ssim": float(np.mean([ssim(a, b) for a, b in zip(images, clean, strict=True)])),
    }


# ------------------------------------------------------------------------------------------ PnP-HVAE settings
def pnp_grid(task: str) -> list[dict]:
    """The settings tried on the tuning set: a constant temperature or PnP-HVAE's linear schedules, the decoder's
    own variance or their constant decoder_std, and for inpainting the noiseless projection or their sigma 3/255."""
    temperatures: list = [1.0, 0.8, LinearTemperature(0.3, 0.8), LinearTemperature(0.8, 0.5)]
    if task == "denoising":
        temperatures.append(LinearTemperature(0.99, 0.8))
    stds = [None, 3 / 255, 10 / 255]
    sigmas = [0.0, 3 / 255] if task == "inpainting" else [None]
    return [dict(temperature=t, decoder_std=s, sigma=g) for t in temperatures for s in stds for g in sigmas]


def describe(setting: dict) -> str:
    std = setting["decoder_std"]
    text = f"T={setting['temperature']}, decoder_std=" + ("decoder's" if std is None else f"{std * 255:g}/255")
    return text + (f", sigma={setting['sigma'] * 255:g}/255" if setting.get("sigma") is not None else "")


def run_pnp(model, observed, op, setting: dict, steps: int, samples: int = 1) -> tuple[np.ndarray, float]:
    if setting.get("sigma") is not None:
        op = Inpainting(op.mask, sigma=setting["sigma"])
    result = restore(
        model,
        observed,
        op,
        steps=steps,
        temperature=setting["temperature"],
        decoder_std=setting["decoder_std"],
        samples=samples,
    )
    return result.images, result.seconds_per_image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--tune", type=int, default=16, help="images to choose settings on (the first ones)")
    parser.add_argument("--test", type=int, default=32, help="images to report on (the next ones)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--tasks", default="inpainting,x2,x4,denoising")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    model = vdvae_zoo.load(args.model, device="cpu")
    size = model.config.image_size
    files = find_images([args.images])
    tune_clean, _, _ = load_images(files[: args.tune], size=size)
    test_clean, _, _ = load_images(files[args.tune : args.tune + args.test], size=size)
    tuning, rows, chosen = [], [], {}
    for task in args.tasks.split(","):
        tune_y, op = observe(task, tune_clean, size, seed=1)
        test_y, _ = observe(task, test_clean, size, seed=2)
        # The plain start PnP-HVAE iterates from (mean fill, bicubic, the noisy image): a reference, not a rival.
        start = to_uint8(op.initial(torch.tensor(test_y)).numpy())
        rows.append(dict(task=task, method="start: " + type(op).__name__ + ".initial", **measure(start, test_clean)))
        for name, (grid, fn) in classical(task, size).items():
            scored = []
            for p in grid:
                out = to_uint8(np.stack([fn(y, p) for y in tune_y]))
                scored.append((measure(out, tune_clean)["psnr"], p))
            best = max(scored, key=lambda s: s[0])[1]
            t0 = time.perf_counter()
            out = to_uint8(np.stack([fn(y, best) for y in test_y]))
            seconds = (time.perf_counter() - t0) / len(test_y)
            label = name + ("" if best is None else f", parameter {best:g} (best of {grid} on the tuning set)")
            rows.append(dict(task=task, method=label, **measure(out, test_clean), seconds_per_image=seconds))
            print(f"{task:<11} {label:<80} PSNR {rows[-1]['psnr']:6.2f} SSIM {rows[-1]['ssim']:.3f}", flush=True)
        scored = []
        for setting in pnp_grid(task):
            images, seconds = run_pnp(model, tune_y, op, setting, args.steps)
            m = measure(images, tune_clean)
            tuning.append(dict(task=task, setting=describe(setting), **m, seconds_per_image=seconds))
            scored.append((m["psnr"], setting))
            print(f"  tuning {task:<11} {describe(setting):<60} PSNR {m['psnr']:6.2f} SSIM {m['ssim']:.3f}", flush=True)
        best = max(scored, key=lambda s: s[0])[1]
        chosen[task] = describe(best)
        default = dict(temperature=None, decoder_std="auto", sigma=None)
        for label, setting in (
            ("PnP-HVAE, best setting on the tuning set: " + describe(best), best),
            ("PnP-HVAE, the library's defaults", default),
        ):
            images, seconds = run_pnp(model, test_y, op, setting, args.steps)
            rows.append(dict(task=task, method=label, **measure(images, test_clean), seconds_per_image=seconds))
            print(f"{task:<11} {label:<80} PSNR {rows[-1]['psnr']:6.2f} SSIM {rows[-1]['ssim']:.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                dict(
                    model=args.model,
                    tune=args.tune,
                    test=args.test,
                    steps=args.steps,
                    rows=rows,
                    chosen=chosen,
                    tuning=tuning,
                ),
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
