"""Bits-back compression, measured: rate against the ELBO, archive size and time against the number of images,
the cifar10 architecture's cost per image, and how often float64 rounding differs between thread counts.

    python benchmarks/compress_bench.py --json benchmarks/results_compress_cpu.json --plot docs/images/compress_bpd.png

1. scale: a tiny 16x16 model trained by our trainer on photo crops; held-out crops compressed in archives of
   100, 1,000 and 10,000 images (each in its own process, so that its peak memory is its own): total bits per dim,
   images stored as WebP, the bits-back images' net rate against the model's ELBO (mean of 8 draws on a sample
   of them), lossless WebP and PNG on the same images, seconds per image for the first and the last 100 images
   of the archive (compress and decompress), and the peak resident memory.
2. cifar10: the cifar10 architecture (random weights, the zero-initialised last convolutions given small values
   so that the latents matter) on photo crops: the bits an image pops (the initial bits an archive needs), each
   image's breakdown against the ELBO of 8 draws, and seconds per image to compress and decompress one bits-back
   image; from these, the overhead of archives of 100, 1,000 and 10,000 images.
3. flips: the model's rounded distribution parameters computed with 1 and with 2 threads (float64, the same
   latent path): the fraction of values whose 2^-24 rounding differs, on the golden tiny32 and on cifar10.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vdvae_zoo  # noqa: E402
from vdvae_zoo.config import resolve_config  # noqa: E402
from vdvae_zoo.data.images import photo_crops  # noqa: E402
from vdvae_zoo.data.plots import line_chart  # noqa: E402
from vdvae_zoo.training.trainer import Trainer, TrainOptions  # noqa: E402

C = importlib.import_module("vdvae_zoo.coding.archive")
B = importlib.import_module("vdvae_zoo.coding.bitsback")  # the coder's mechanics
REPO = Path(__file__).resolve().parents[1]
TINY16 = dict(
    image_size=16,
    width=16,
    zdim=4,
    num_mixtures=2,
    enc_blocks="16x1,16d2,8x1,8d2,4x1,4d4,1x1",
    dec_blocks="1x1,4m1,4x1,8m4,8x1,16m8,16x1",
)


def crops(n: int, size: int, seed: int) -> list:
    return photo_crops(n, size, seed, side=96, photos=8)  # as tests/test_compress.py


def classical_bits(images) -> tuple:
    webp = png = 0
    for im in images:
        for fmt, kw in (("WEBP", dict(lossless=True, quality=100, method=6)), ("PNG", dict(optimize=True))):
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format=fmt, **kw)
            if fmt == "WEBP":
                webp += len(buf.getvalue())
            else:
                png += len(buf.getvalue())
    return 8 * webp, 8 * png


def elbo_of_8_draws(model, images) -> float:
    x = np.stack(images)
    return float(
        np.mean([model.likelihood(x, seeds=[1000 * d + i for i in range(len(x))]).bpd.numpy() for d in range(8)])
    )


# ------------------------------------------------------------------------------------------------------ 1. scale
def train_tiny(folder: Path, steps: int) -> Path:
    (folder / "train").mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(crops(256, 16, seed=1)):
        Image.fromarray(im).save(folder / "train" / f"{i:03d}.png")
    (folder / "c.json").write_text(json.dumps(TINY16))
    Trainer(
        TrainOptions(
            data=str(folder / "train"),
            out=str(folder / "run"),
            config=str(folder / "c.json"),
            steps=steps,
            batch_size=16,
            val_fraction=0.0,
            val_every=0,
            save_every=0,
            sample_every=0,
            device="cpu",
        )
    ).train()
    return folder / "run"


def scale_one(model_path: str, n: int) -> dict:
    """One archive of n held-out crops (run in a child process: its peak memory is this archive's)."""
    torch.set_num_threads(1)
    model = vdvae_zoo.load(model_path, device="cpu")
    times = []

    def images():
        for k in range(0, n, 500):  # read as they are needed: the folder is never in memory at once
            yield from crops(min(500, n - k), 16, seed=99 + k)

    start = time.perf_counter()
    archive, report = C.compress(model, images(), progress=lambda r: times.append(time.perf_counter()))
    compress_s = time.perf_counter() - start
    dec_times, start = [], time.perf_counter()
    for _ in C.decompress_iter(model, archive):
        dec_times.append(time.perf_counter())
    decompress_s = time.perf_counter() - start
    coded = [j for j, r in enumerate(report.records) if r.mode == "bits-back"]
    all_images = [im for im in images()]
    sample = (
        sorted(np.random.default_rng(0).choice(coded, size=min(200, len(coded)), replace=False).tolist())
        if coded
        else []
    )  # at random: the crops cycle through 8 photos, so every k-th image is not a fair sample
    elbo = elbo_of_8_draws(model, [all_images[j] for j in sample]) if sample else None
    net = float(np.mean([report.records[j].net for j in sample])) / 768 if sample else None
    webp, png = classical_bits(all_images)
    dims = n * 768

    def per_image(stamps, first):
        gaps = np.diff(np.array(stamps))
        return float(np.mean(gaps[:99])) if first else float(np.mean(gaps[-99:]))

    net_all = float(np.mean([report.records[j].net for j in coded])) / 768 if coded else None
    return {
        "images": n,
        "bits_per_dim": report.bits_per_dim,
        "webp_images": report.webp_images,
        "net_bits_per_dim_all": net_all,
        "container_bits_per_dim": 8 * report.extra["container_bytes"] / dims,
        "webp_stored_bits_per_dim": 8 * report.webp_bytes / dims,
        "net_bits_per_dim_sample": net,
        "elbo_8_draws_sample": elbo,
        "net_over_elbo": net / elbo if elbo else None,
        "webp_bits_per_dim": webp / dims,
        "png_bits_per_dim": png / dims,
        "archive_over_elbo": report.bits_per_dim / elbo if elbo else None,
        "compress_s_per_image": compress_s / n,
        "decompress_s_per_image": decompress_s / n,
        "compress_s_first_100": per_image(times, True),
        "compress_s_last_100": per_image(times, False),
        "decompress_s_first_100": per_image(dec_times, True),
        "decompress_s_last_100": per_image(dec_times, False),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "archive_bytes": report.archive_bytes,
        "whiten_words": report.whiten_words,
    }


def scale(counts: list, steps: int) -> list:
    model = train_tiny(Path(tempfile.mkdtemp()), steps)
    rows = []
    for n in counts:
        out = subprocess.run(
            [sys.executable, __file__, "--scale-one", str(model), str(n)], capture_output=True, text=True, check=True
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{n:6d} images: archive {r['bits_per_dim']:.3f} bpd ({r['webp_images']} as WebP), bits-back "
            f"{r['net_bits_per_dim_sample']:.3f} vs ELBO {r['elbo_8_draws_sample']:.3f} ({r['net_over_elbo']:.4f}x); "
            f"WebP {r['webp_bits_per_dim']:.3f}, PNG {r['png_bits_per_dim']:.3f}; compress "
            f"{r['compress_s_first_100'] * 1e3:.1f} -> {r['compress_s_last_100'] * 1e3:.1f} ms/img, decompress "
            f"{r['decompress_s_first_100'] * 1e3:.1f} -> {r['decompress_s_last_100'] * 1e3:.1f} ms/img; peak RSS "
            f"{r['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
    return rows


# ---------------------------------------------------------------------------------------------------- 2. cifar10
def random_model(preset: str):
    torch.manual_seed(0)
    model = vdvae_zoo.VDVAE(resolve_config(preset)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and not p.any():
                p.normal_(0, 0.01)
    return model


def cifar10(images_n: int) -> dict:
    import constriction as c

    model = random_model("cifar10")
    images = crops(images_n, 32, seed=5)
    dims = 32 * 32 * 3
    with B._exact(model) as exact:
        start = time.perf_counter()
        pops = [B.dry_run(exact, im, j, B.DEFAULT_GRID, c)[0].popped for j, im in enumerate(images[:2])]
        dry_run_s = (time.perf_counter() - start) / 2
        words = np.random.default_rng(0).integers(0, 2**32, int(2 * max(pops) / 32), dtype=np.uint32)
        stack = B.Stack(c, int(1.5 * max(pops) / 32), words)
        records, t0 = [], time.perf_counter()
        for j, im in enumerate(images):
            records.append(B._encode_bits_back(stack, exact, im, j, stack.reserve, c, f"{j}"))
            stack.spill()
        compress_s = (time.perf_counter() - t0) / images_n
        push_words = max(int(math.ceil((r.pixels + r.pushed) / 32)) + 2 for r in records)
        t0 = time.perf_counter()
        decoded = [
            B._decode_bits_back(stack, exact, j, stack.reserve, push_words, c) for j in reversed(range(images_n))
        ]
        decompress_s = (time.perf_counter() - t0) / images_n
        exact_round_trip = all(np.array_equal(a, b) for a, b in zip(decoded[::-1], images, strict=False))
    elbo = elbo_of_8_draws(model, images)
    net = float(np.mean([r.net for r in records])) / dims
    webp, _ = classical_bits(images)
    webp_bpd = webp / (images_n * dims)
    stored = int(math.ceil(max(pops) / (webp_bpd * dims)))  # WebP images an archive stores before bits-back
    overhead = {}
    for n in (100, 1000, 10000):
        coded = max(0, n - stored)
        total = (min(n, stored) * webp_bpd + coded * net) / n
        overhead[str(n)] = {
            "archive_bits_per_dim": total,
            "archive_over_elbo": total / elbo,
            "stored_as_webp": min(n, stored),
        }
    return {
        "preset": "cifar10",
        "images": images_n,
        "pop_bits_per_image": pops,
        "dry_run_s": dry_run_s,
        "compress_s_per_image": compress_s,
        "decompress_s_per_image": decompress_s,
        "exact_round_trip": exact_round_trip,
        "net_bits_per_dim": net,
        "elbo_8_draws": elbo,
        "net_over_elbo": net / elbo,
        "kl_plus_distortion": float(np.mean([r.kl + r.distortion for r in records])) / dims,
        "popped_bits_per_dim": float(np.mean([r.popped for r in records])) / dims,
        "webp_bits_per_dim": webp_bpd,
        "webp_images_before_bits_back": stored,
        "overhead": overhead,
        "records": [vars(r) for r in records],
    }


# ------------------------------------------------------------------------------------------------------ 3. flips
def _rounded_params(model, image, z_path=None):
    """The rounded prior and posterior parameters of every layer along one latent path (the posterior means', or
    `z_path`), and the rounded output parameters: one float64 vector."""
    values, path = [], []

    def choose(i, layer):
        grid = B._Latents(layer, B.DEFAULT_GRID, i)
        values.extend([grid.mu, grid.sigma, *grid.posterior])
        z = z_path[i] if z_path is not None else grid.value(np.round(grid.posterior[0]))
        path.append(z)
        return z

    params = model.decode_with(choose, images=torch.from_numpy(image[None]))
    return np.concatenate(values + [B._grid(params)]), path


def flips(images_n: int) -> dict:
    expected = json.loads((REPO / "tests" / "golden" / "tiny32" / "expected.json").read_text())
    golden = vdvae_zoo.load(
        REPO / "tests" / "golden" / "tiny32" / "model-ema.th",
        config=expected["config"] | expected["preprocess"],
        device="cpu",
    )
    out = {}
    for name, model in (("golden tiny32", golden), ("cifar10", random_model("cifar10"))):
        exact = B.copy.deepcopy(model).to(dtype=torch.float64).eval()
        differing = total = 0
        for im in crops(images_n, 32, seed=11):
            torch.set_num_threads(1)
            one, path = _rounded_params(exact, im)
            torch.set_num_threads(2)
            two, _ = _rounded_params(exact, im, path)
            differing += int(np.sum(one != two))
            total += one.size
        torch.set_num_threads(1)
        out[name] = {"values": total, "differing": differing, "fraction": differing / total, "images": images_n}
        print(f"{name}: {differing} of {total:,} rounded values differ between 1 and 2 threads", flush=True)
    return out


def plot(rows: list, path: str) -> None:
    """Total bits per dim against log10(images per archive): the bits-back archive, lossless WebP, PNG."""
    series = {
        name: [(math.log10(r["images"]), r[key]) for r in rows]
        for name, key in (
            ("bits-back archive (total)", "bits_per_dim"),
            ("lossless WebP", "webp_bits_per_dim"),
            ("PNG", "png_bits_per_dim"),
        )
    }
    line_chart(series, path, x_label="log10 images per archive; bits per dim")


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--scale-one":
        print(json.dumps(scale_one(sys.argv[2], int(sys.argv[3]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="100,1000,10000")
    parser.add_argument("--steps", type=int, default=300, help="Training steps of the tiny model.")
    parser.add_argument("--cifar10-images", type=int, default=4)
    parser.add_argument("--flip-images", type=int, default=3)
    parser.add_argument("--parts", default="scale,cifar10,flips")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).is_file() else {}
    parts = args.parts.split(",")
    if "scale" in parts:
        result["scale"] = scale([int(c) for c in args.counts.split(",")], args.steps)
        if args.plot:
            plot(result["scale"], args.plot)
    if "cifar10" in parts:
        result["cifar10"] = t = cifar10(args.cifar10_images)
        print(
            f"cifar10: pops {np.mean(t['pop_bits_per_image']):,.0f} bits per image; compress "
            f"{t['compress_s_per_image']:.2f} s, decompress {t['decompress_s_per_image']:.2f} s per image; net "
            f"{t['net_bits_per_dim']:.3f} vs ELBO {t['elbo_8_draws']:.3f} ({t['net_over_elbo']:.4f}x); WebP "
            f"{t['webp_bits_per_dim']:.3f}; {t['webp_images_before_bits_back']} WebP images before bits-back",
            flush=True,
        )
    if "flips" in parts:
        result["flips"] = flips(args.flip_images)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
