"""The latent grid of bits-back compression, swept on six models (docs/compress.md, issue #29).

    python benchmarks/compress_grid_sweep.py --json benchmarks/results_compress_grid_cpu.json

For each model: archives of its images coded on fixed grids and with the grid chosen per archive (`auto`), the
bits-back images' mean net bits per dim against the mean of 8 ELBO draws on the same images (net / ELBO), the
coded draws' own ELBO against it (draw / ELBO: 1 when the coded latents are posterior draws), the mean excess by
cause, the archive's bits per dim, and the dry run's choice and seconds. "before" is the coder as it was before
#29 (one grid, a layer's widest posterior setting every latent's window, the coder's head not whitened), run by
today's code in that mode (its archives are not decoded here; tests/data holds one that is).

Models: the four the default grid was measured on (the golden tiny32 on 110 noisy copies of its images; a tiny32
trained here for 600 steps on 450 photo crops, on 100 held-out crops; a random 32x32 model of width 48 and zdim 6
on 60 crops; the cifar10 architecture with random weights on 3 crops, coded on random bits as in a long archive),
and two new ones: a random 32x32 model of width 24, zdim 5 and 4 mixtures with posteriors far from their priors
(the issue's shape; tests/test_compress_grid.py builds it) on 110 noisy golden images, and one of width 20 with its
posteriors twice as far, on 60.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import golden_config  # noqa: E402
from test_compress_grid import far_posterior_model, golden_images  # noqa: E402

import vdvae_zoo  # noqa: E402
from vdvae_zoo.coding.grid import DEFAULT_GRID, LatentGrid  # noqa: E402
from vdvae_zoo.config import resolve_config  # noqa: E402
from vdvae_zoo.data.images import photo_crops  # noqa: E402
from vdvae_zoo.training.trainer import Trainer, TrainOptions  # noqa: E402

C = importlib.import_module("vdvae_zoo.coding.archive")
B = importlib.import_module("vdvae_zoo.coding.bitsback")
REPO = Path(__file__).resolve().parents[1]
GRIDS = [
    ("2^-7, +-24 (default)", DEFAULT_GRID),
    ("2^-7, +-8", LatentGrid(2.0**-7, 8.0)),
    ("2^-5, +-24", LatentGrid(2.0**-5, 24.0)),
    ("2^-9, +-24", LatentGrid(2.0**-9, 24.0)),
    ("2^-7, +-128", LatentGrid(2.0**-7, 128.0)),
]


def elbo_per_image(model, images, draws: int = 8) -> np.ndarray:
    x = np.stack(images)
    return np.mean(
        [model.likelihood(x, seeds=[1000 * d + i for i in range(len(x))]).bpd.numpy() for d in range(draws)], axis=0
    )


@contextlib.contextmanager
def before_29():
    """Today's coder in the mode of format 2: whole-layer windows, the head not whitened."""
    init = B.Stack.__init__

    def legacy_init(self, c, reserve, words=None, whiten_head=True):
        init(self, c, reserve, words, whiten_head=False)

    B.Stack.__init__ = legacy_init
    try:
        yield LatentGrid(windows="layer")
    finally:
        B.Stack.__init__ = init


def summarise(records, elbo, dims) -> dict:
    coded = [j for j, r in enumerate(records) if r.mode == "bits-back"]
    if not coded:
        return {"bits_back_images": 0}
    rs = [records[j] for j in coded]
    e = float(np.mean(elbo[coded]))
    net = float(np.mean([r.net for r in rs])) / dims
    draw = float(np.mean([r.kl + r.distortion for r in rs])) / dims
    return {
        "bits_back_images": len(coded),
        "net": net,
        "elbo_8": e,
        "net_over_elbo": net / e,
        "draw_over_elbo": draw / e,
        "excess": {k: float(np.mean([r.excess[k] for r in rs])) / dims for k in rs[0].excess},
        "clipped_per_image": float(np.mean([r.clipped for r in rs])),
    }


def chain(model, images) -> dict:
    """Archives of `images` on each grid, before #29 and with auto."""
    dims = images[0].size
    elbo = elbo_per_image(model, images)
    out = {}
    runs = [("before #29 (2^-7, +-24)", None)] + GRIDS + [("auto", "auto")]
    for name, grid in runs:
        start = time.perf_counter()
        if grid is None:
            with before_29() as legacy:
                _, report = C.compress(model, images, grid=legacy)
        else:
            _, report = C.compress(model, images, grid=grid)
        row = summarise(report.records, elbo, dims)
        row.update(archive_bits_per_dim=report.bits_per_dim, seconds=time.perf_counter() - start)
        if grid == "auto":
            row.update(
                chosen=report.grid["description"],
                choice_seconds=report.grid_choice["seconds"],
                candidates=report.grid_choice["candidates"],
            )
        out[name] = row
        print(
            f"  {name}: "
            + (
                f"net/ELBO {row['net_over_elbo']:.3f}, draw/ELBO {row['draw_over_elbo']:.3f}, archive "
                f"{row['archive_bits_per_dim']:.3f} bpd ({row['bits_back_images']} bits-back)"
                if row["bits_back_images"]
                else "no bits-back image"
            )
            + (f"; chose {row['chosen']} in {row['choice_seconds']:.1f} s" if grid == "auto" else ""),
            flush=True,
        )
    return out


def random_bits(model, images) -> dict:
    """Images each coded alone on random bits (a long archive's steady state, without its initial images)."""
    import constriction as c

    dims = images[0].size
    elbo = elbo_per_image(model, images)
    out = {}
    with B._exact(model) as exact:
        for name, grid in GRIDS + [("auto", "auto")]:
            start, extra = time.perf_counter(), {}
            if grid == "auto":
                grid, account = C.choose_grid(exact, images, c)
                extra = dict(chosen=grid.describe(), choice_seconds=account["seconds"])
            records = [B.dry_run(exact, im, 100 + j, grid, c)[0] for j, im in enumerate(images)]
            row = summarise(records, elbo, dims)
            row.update(seconds=time.perf_counter() - start, **extra)
            out[name] = row
            print(
                f"  {name}: net/ELBO {row['net_over_elbo']:.3f}, draw/ELBO {row['draw_over_elbo']:.3f}"
                + (f"; chose {extra['chosen']} in {extra['choice_seconds']:.1f} s" if extra else ""),
                flush=True,
            )
    return out


def crops(n, size, seed):
    return photo_crops(n, size, seed, side=96, photos=8)


def trained_tiny32(steps: int):
    folder = Path(tempfile.mkdtemp())
    (folder / "train").mkdir()
    for i, im in enumerate(crops(450, 32, 1)):
        Image.fromarray(im).save(folder / "train" / f"{i:03d}.png")
    (folder / "c.json").write_text(json.dumps(resolve_config("tiny32").to_dict()))
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
    return vdvae_zoo.load(folder / "run", device="cpu")


def perturbed(config, seed: int, std: float):
    torch.manual_seed(seed)
    model = vdvae_zoo.VDVAE(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and not p.any():
                p.normal_(0.0, std)
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="golden,trained,width48,cifar10,far24,far20")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).is_file() else {}
    golden_fields = {k: v for k, v in golden_config().items() if k in vdvae_zoo.VDVAEConfig.__dataclass_fields__}
    for name in args.models.split(","):
        print(name, flush=True)
        if name == "golden":
            model = vdvae_zoo.load(
                REPO / "tests" / "golden" / "tiny32" / "model-ema.th", config=golden_config(), device="cpu"
            )
            result[name] = chain(model, golden_images(110))
        elif name == "trained":
            result[name] = chain(trained_tiny32(args.steps), crops(100, 32, 99))
        elif name == "width48":
            config = vdvae_zoo.VDVAEConfig.from_dict(golden_fields | dict(width=48, zdim=6))
            result[name] = chain(perturbed(config, 7, 0.05), crops(60, 32, 4))
        elif name == "cifar10":
            result[name] = random_bits(perturbed(resolve_config("cifar10"), 0, 0.01), crops(3, 32, 5))
        elif name == "far24":
            result[name] = chain(far_posterior_model(), golden_images(110))
        elif name == "far20":
            result[name] = chain(far_posterior_model(width=20, posterior_scale=20.0), golden_images(60))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
