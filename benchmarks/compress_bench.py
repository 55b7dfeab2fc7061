"""Bits-back compression: archive size against the number of images, and time per image.

    python benchmarks/compress_bench.py --json benchmarks/results_compress_cpu.json --plot docs/images/compress_bpd.png

1. Rate: a tiny 16x16 model trained by our trainer (as in the tests) on photo crops; held-out crops compressed in
   archives of 10, 100 and 1,000 images: total bits per dim (initial bits included), the net bits per dim of the
   bits-back images, the model's ELBO on them, and the same images as lossless WebP and PNG.
2. Time: the cifar10 preset (random weights, last convolutions given small values) on real photo crops:
   seconds per image to compress and to decompress one bits-back image, and the share of that spent in the
   network (the float64 decoder passes) rather than in the coder and the probability tables.
"""

from __future__ import annotations

import argparse
import importlib
import math
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vdvae_zoo
from vdvae_zoo.config import resolve_config
from vdvae_zoo.images import photo_crops
from vdvae_zoo.plots import line_chart
from vdvae_zoo.train import Trainer, TrainOptions

C = importlib.import_module("vdvae_zoo.compress")


def crops(n: int, size: int, seed: int) -> list:
    return photo_crops(n, size, seed, side=96, photos=8)  # as tests/test_compress.py


def classical_bits(images: list) -> tuple:
    webp = png = 0
    for im in images:
        for fmt, kw in (("WEBP", dict(lossless=True, quality=100, method=6)), ("PNG", dict(optimize=True))):
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format=fmt, **kw)
            webp, png = (webp + len(buf.getvalue()), png) if fmt == "WEBP" else (webp, png + len(buf.getvalue()))
    return 8 * webp, 8 * png


def rate(counts: list, steps: int) -> list:
    tmp = Path(tempfile.mkdtemp())
    (tmp / "train").mkdir()
    for i, im in enumerate(crops(256, 16, seed=1)):
        Image.fromarray(im).save(tmp / "train" / f"{i:03d}.png")
    (tmp / "c.json").write_text(json.dumps(dict(image_size=16, width=16, zdim=4, num_mixtures=2,
                                                enc_blocks="16x1,16d2,8x1,8d2,4x1,4d4,1x1",
                                                dec_blocks="1x1,4m1,4x1,8m4,8x1,16m8,16x1")))
    Trainer(TrainOptions(data=str(tmp / "train"), out=str(tmp / "run"), config=str(tmp / "c.json"), steps=steps,
                         batch_size=16, val_fraction=0.0, val_every=0, save_every=0, sample_every=0,
                         device="cpu")).train()
    model = vdvae_zoo.load(tmp / "run", device="cpu")
    held_out = crops(max(counts), 16, seed=99)
    rows = []
    for n in counts:
        images = held_out[:n]
        start = time.perf_counter()
        archive, report = C.compress(model, images)
        seconds = time.perf_counter() - start
        dims = n * 16 * 16 * 3
        coded = images[report.webp_images:]
        torch.manual_seed(0)
        elbo = float(model.likelihood(np.stack(coded)).bpd.double().mean()) if coded else None
        webp, png = classical_bits(images)
        rows.append({"images": n, "bits_per_dim": report.bits_per_dim, "webp_images": report.webp_images,
                     "net_bits_per_dim": float(np.mean(report.net_bits_per_dim)) if coded else None,
                     "elbo_bits_per_dim": elbo, "webp_bits_per_dim": webp / dims, "png_bits_per_dim": png / dims,
                     "seconds_per_image": seconds / n})
        r = rows[-1]
        print(f"{n:5d} images: archive {r['bits_per_dim']:.3f} bpd ({r['webp_images']} as WebP); bits-back images "
              f"{r['net_bits_per_dim'] or float('nan'):.3f} vs ELBO {elbo or float('nan'):.3f}; WebP "
              f"{r['webp_bits_per_dim']:.3f}, PNG {r['png_bits_per_dim']:.3f}", flush=True)
    return rows


def timing(preset: str, repeats: int) -> dict:
    import constriction
    torch.manual_seed(0)
    model = vdvae_zoo.VDVAE(resolve_config(preset)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.abs().sum() == 0 and name.endswith("weight"):
                p.normal_(0, 0.01)
    size = model.config.image_size
    images = crops(repeats, size, seed=5)
    with C._exact(model) as exact:
        ans = constriction.stream.stack.AnsCoder(
            np.random.default_rng(0).integers(0, 2 ** 32, 1 << 23, dtype=np.uint32), seal=True)
        t0 = time.perf_counter()
        for im in images:
            C._push_image(ans, exact, im, constriction)
        compress_s = (time.perf_counter() - t0) / repeats
        t0 = time.perf_counter()
        for _ in images:
            C._pop_image(ans, exact, constriction)
        decompress_s = (time.perf_counter() - t0) / repeats
        t0 = time.perf_counter()
        for im in images:  # the network alone: a decoder pass with the posterior (compressing makes one)
            exact.decode_with(lambda i, layer: layer.p_mean.double(), images=torch.from_numpy(im[None].copy()))
        posterior_pass = (time.perf_counter() - t0) / repeats
        t0 = time.perf_counter()
        for _ in images:  # and one from the prior alone (decompressing makes one of each)
            exact.decode_with(lambda i, layer: layer.p_mean.double())
        prior_pass = (time.perf_counter() - t0) / repeats
    return {"preset": preset, "images": repeats, "compress_s_per_image": compress_s,
            "decompress_s_per_image": decompress_s, "posterior_pass_s": posterior_pass, "prior_pass_s": prior_pass,
            "network_share_compress": posterior_pass / compress_s,
            "network_share_decompress": (posterior_pass + prior_pass) / decompress_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="10,100,1000")
    parser.add_argument("--steps", type=int, default=300, help="Training steps of the tiny model.")
    parser.add_argument("--preset", default="cifar10")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    rows = rate([int(c) for c in args.counts.split(",")], args.steps)
    t = timing(args.preset, args.repeats)
    print(f"{t['preset']}: compress {t['compress_s_per_image']:.2f} s, decompress {t['decompress_s_per_image']:.2f} s per "
          f"image; the network {t['network_share_compress']:.0%} / {t['network_share_decompress']:.0%} of that", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rate": rows, "timing": t}, indent=2) + "\n")
    if args.plot:
        plot(rows, args.plot)


def plot(rows: list, path: str) -> None:
    """Total bits per dim against log10(images per archive): the bits-back archive, lossless WebP, PNG."""
    series = {name: [(math.log10(r["images"]), r[key]) for r in rows] for name, key in
              (("bits-back archive (total)", "bits_per_dim"), ("lossless WebP", "webp_bits_per_dim"),
               ("PNG", "png_bits_per_dim"))}
    line_chart(series, path, x_label="log10 images per archive; bits per dim")


if __name__ == "__main__":
    sys.exit(main())
