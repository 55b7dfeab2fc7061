"""Throughput and peak memory of `vdvae-zoo eval` on a synthetic CIFAR-10 binary test file (random pixels,
random-init weights), each measurement in its own process so that each peak RSS is its own.

    python benchmarks/eval_bench.py --json benchmarks/results_eval_cpu.json

Rows: the cifar10 preset at --limit 256 in float32 and bfloat16 (images/s, peak RSS); the same limit on data
files of 1,000 and 10,000 images (memory must not follow the file's size: it is memory-mapped); and tiny32 at
--limit 1,000 and 10,000 (memory must not follow the number of images evaluated either).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_cifar_bin(folder: Path, n: int) -> Path:
    """A cifar-10-batches-bin/test_batch.bin of n random records (1 label byte + 3072 pixel bytes)."""
    out = folder / f"cifar{n}" / "cifar-10-batches-bin"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(out / "test_batch.bin", "wb") as f:
        for start in range(0, n, 1000):
            f.write(rng.integers(0, 256, (min(1000, n - start), 3073), dtype=np.uint8).tobytes())
    return out


def child(config: str, data: str, limit: int, dtype: str, batch_size: int) -> dict:
    import torch

    import vdvae_zoo
    from vdvae_zoo.config import resolve_config

    torch.manual_seed(0)
    model = vdvae_zoo.VDVAE(resolve_config(config)).eval()
    with torch.no_grad():  # give the zero-initialised last convolutions small values, so every layer works
        for name, p in model.named_parameters():
            if p.abs().sum() == 0 and name.endswith("weight"):
                p.normal_(0, 0.01)
    start = time.perf_counter()
    report = vdvae_zoo.evaluate(model, data, limit=limit, dtype=dtype, batch_size=batch_size, progress=False)
    elapsed = time.perf_counter() - start
    return {
        "config": config,
        "data_images": int(Path(data, "test_batch.bin").stat().st_size // 3073),
        "limit": limit,
        "dtype": dtype,
        "batch_size": batch_size,
        "images": report.images,
        "seconds": elapsed,
        "images_per_s": report.images / elapsed,
        "mean_bpd": report.mean_bpd,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--sizes", default="1000,10000", help="Data file sizes (images).")
    parser.add_argument("--tiny-limits", default="1000,10000")
    parser.add_argument("--preset", default="cifar10")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--child", nargs=5, metavar=("CONFIG", "DATA", "LIMIT", "DTYPE", "BATCH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        config, data, limit, dtype, batch = args.child
        print(json.dumps(child(config, data, int(limit), dtype, int(batch))))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        files = {n: write_cifar_bin(Path(tmp), n) for n in sizes}
        big = files[max(sizes)]
        plan = [(args.preset, big, args.limit, "float32"), (args.preset, big, args.limit, "bfloat16")]
        plan += [(args.preset, files[n], args.limit, "float32") for n in sizes if files[n] != big]
        plan += [("tiny32", big, int(limit), "float32") for limit in args.tiny_limits.split(",")]
        rows = []
        for config, data, limit, dtype in plan:  # one process each: alone on the machine, its own peak RSS
            out = subprocess.run(
                [sys.executable, __file__, "--child", config, str(data), str(limit), dtype, str(args.batch_size)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"{r['config']:>8} {r['dtype']:>8}  data {r['data_images']:>6}  limit {r['limit']:>6}: "
                f"{r['images_per_s']:7.2f} images/s, peak RSS {r['peak_rss_mib']:7.0f} MiB",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
