"""The operations of one VDVAE residual block, timed one by one in float32 and bfloat16: where the time goes.

    python benchmarks/ops.py                                  # cifar10's 32x32 block (width 384), batch 8, NHWC
    python benchmarks/ops.py --width 512 --resolution 64 --batch-size 4 --nchw --json ops.json

The block is c4(gelu(c3(gelu(c2(gelu(c1(gelu(x)))))))) + x with a bottleneck of width/4 (see model.Block).
For each operation: milliseconds (median of --repeats after a warm-up), GFLOP/s for the convolutions and
GB/s (bytes read + written) for the elementwise ones. Convolutions gain about 2x from bf16 on a CPU with native
bf16; elementwise operations do not, which bounds what bf16 can give the whole model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F


def median_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def block_ops(
    width: int,
    resolution: int,
    batch: int,
    dtype: torch.dtype,
    memory_format: torch.memory_format,
    device: torch.device,
) -> dict[str, tuple]:
    """name -> (callable, FLOPs or 0, bytes moved or 0) for the operations of one residual block."""
    middle = width // 4
    gen = torch.Generator().manual_seed(0)

    def tensor(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dt).contiguous(memory_format=memory_format)

    stream = tensor(batch, width, resolution, resolution, dt=torch.float32)  # the residual stream stays fp32
    wide, narrow = tensor(batch, width, resolution, resolution), tensor(batch, middle, resolution, resolution)
    w_in, w_mid, w_out = tensor(middle, width, 1, 1), tensor(middle, middle, 3, 3), tensor(width, middle, 1, 1)
    pixels = batch * resolution * resolution
    size = dtype.itemsize
    return {
        "conv 1x1 in (W -> W/4)": (lambda: F.conv2d(wide, w_in), 2 * pixels * width * middle, 0),
        "conv 3x3 (W/4 -> W/4)": (lambda: F.conv2d(narrow, w_mid, padding=1), 2 * pixels * middle * middle * 9, 0),
        "conv 1x1 out (W/4 -> W)": (lambda: F.conv2d(narrow, w_out), 2 * pixels * width * middle, 0),
        "gelu (W)": (lambda: F.gelu(wide), 0, 2 * pixels * width * size),
        "gelu (W/4)": (lambda: F.gelu(narrow), 0, 2 * pixels * middle * size),
        "cast stream to dtype (W)": (lambda: stream.to(dtype, copy=True), 0, pixels * width * (4 + size)),
        "residual add, new tensor (W)": (lambda: stream + wide, 0, pixels * width * (8 + size)),
        "residual add, in place (W)": (lambda: stream.add_(wide), 0, pixels * width * (8 + size)),
    }


def main(argv: list[str] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--nchw", action="store_true", help="NCHW instead of channels_last")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    fmt = torch.contiguous_format if args.nchw else torch.channels_last
    rows = []
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            for name, (fn, flops, nbytes) in block_ops(
                args.width, args.resolution, args.batch_size, dtype, fmt, device
            ).items():
                ms = median_ms(fn, args.repeats, device)
                rows.append(
                    {
                        "op": name,
                        "dtype": str(dtype).replace("torch.", ""),
                        "ms": ms,
                        "gflop_per_s": flops / ms / 1e6 if flops else None,
                        "gb_per_s": nbytes / ms / 1e6 if nbytes else None,
                    }
                )
    fp32 = {r["op"]: r["ms"] for r in rows if r["dtype"] == "float32"}
    print(
        f"block at {args.resolution}x{args.resolution}, width {args.width}, batch {args.batch_size}, "
        f"{'NCHW' if args.nchw else 'NHWC'}, {torch.get_num_threads()} threads, {device}"
    )
    print(f"{'operation':32s} {'dtype':9s} {'ms':>8s} {'GFLOP/s':>9s} {'GB/s':>7s} {'fp32/this':>9s}")
    for r in rows:
        rate = f"{r['gflop_per_s']:9.1f} {'':7s}" if r["gflop_per_s"] else f"{'':9s} {r['gb_per_s']:7.1f}"
        print(f"{r['op']:32s} {r['dtype']:9s} {r['ms']:8.3f} {rate} {fp32[r['op']] / r['ms']:8.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"args": vars(args), "threads": torch.get_num_threads(), "torch": torch.__version__, "results": rows},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
