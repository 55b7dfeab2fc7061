"""Where the GPU memory of a likelihood pass goes: peak memory per batch size, and the allocated memory after
every block of the encoder and every decoder layer (forward hooks), for one preset on CUDA (random weights).

    python benchmarks/cuda_memory.py --preset ffhq256 --batches 1,2,4,8 --trace-batch 4 --json out.json

Written because ffhq256's likelihood at batch 16 ran out of the H200's 140 GB (benchmarks/README.md): the trace
shows whether memory grows layer after layer (tensors kept alive) or jumps inside one operation (a kernel's
workspace).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vdvae_zoo  # noqa: E402
from vdvae_zoo.nn.network import Block, DecoderLayer  # noqa: E402

GiB = 2**30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ffhq256")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--trace-batch", type=int, default=4)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    t0 = time.perf_counter()
    with torch.device(dev):
        model = vdvae_zoo.VDVAE(vdvae_zoo.VDVAEConfig.from_preset(args.preset)).eval()
    size = model.config.image_size
    out = {
        "preset": args.preset,
        "cudnn": torch.backends.cudnn.version(),
        "torch": torch.__version__,
        "build_s": time.perf_counter() - t0,
        "weights_gib": torch.cuda.memory_allocated(dev) / GiB,
        "peaks": {},
    }
    print(json.dumps({k: v for k, v in out.items() if k != "peaks"}), flush=True)
    for b in [int(x) for x in args.batches.split(",")]:
        images = torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        try:
            model.likelihood(images, batch_size=b, seeds=list(range(b)))
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated(dev) - before) / GiB
        except torch.OutOfMemoryError:
            peak = "out of memory"
        out["peaks"][b] = peak
        print(f"batch {b}: peak above the weights {peak if isinstance(peak, str) else f'{peak:.2f} GiB'}", flush=True)
        torch.cuda.empty_cache()

    trace = []

    def hook(name):
        def record(module, inputs, output):
            torch.cuda.synchronize()
            trace.append((name, torch.cuda.memory_allocated(dev) / GiB, torch.cuda.max_memory_allocated(dev) / GiB))

        return record

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if isinstance(m, DecoderLayer) or (isinstance(m, Block) and n.startswith("encoder."))
    ]
    b = args.trace_batch
    images = torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8)
    torch.cuda.reset_peak_memory_stats(dev)
    try:
        model.likelihood(images, batch_size=b, seeds=list(range(b)))
    except torch.OutOfMemoryError as e:
        trace.append(("out of memory", str(e)[:200], 0.0))
    for h in handles:
        h.remove()
    out["trace_batch"] = b
    out["trace"] = trace
    jumps = sorted(
        ((trace[i][2] - trace[i - 1][2], trace[i][0]) for i in range(1, len(trace)) if isinstance(trace[i][2], float)),
        reverse=True,
    )[:8]
    print("largest peak increases between hooks (GiB, where):", [(round(j, 2), w) for j, w in jumps], flush=True)
    print(
        "allocated after each module (first, middle, last):", trace[:3], trace[len(trace) // 2], trace[-3:], flush=True
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
