"""Peak memory and time of one training step (forward, backward, gradient clipping, AdamW, EMA), with and without
gradient checkpointing, against `vdvae_zoo.compute.memory.training_memory`'s estimate. One process per measurement, so
each peak is its own: max RSS on the CPU, `max_memory_allocated` on CUDA.

    python benchmarks/train_memory.py --preset imagenet64 --batches 1,2,4 --json out.json
    python benchmarks/train_memory.py --preset ffhq256 --batches 1 --checkpoint both

A step is what `Trainer.train_step` does, on random uint8 images with the preset's random weights (memory does not
depend on the pixels): two steps, the second timed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GiB = 2**30


def one(preset: str, batch: int, checkpoint: bool, device: str, dtype: str) -> dict:
    import torch

    import vdvae_zoo
    from vdvae_zoo.compute.memory import training_memory
    from vdvae_zoo.config import resolve_config

    dev = torch.device(device)
    config = resolve_config(preset)
    torch.manual_seed(0)
    model = vdvae_zoo.VDVAE(config).to(dev).train().set_grad_checkpointing(checkpoint)
    ema = vdvae_zoo.VDVAE(config).to(dev).eval().requires_grad_(False)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.9))
    images = torch.randint(
        0, 256, (batch, config.image_size, config.image_size, config.image_channels), dtype=torch.uint8
    )
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    times = []
    for _ in range(2):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(images)["neg_elbo"].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 200.0)
        optimizer.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters(), strict=False):
                pe.mul_(0.999).add_(p.detach(), alpha=0.001)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    plan = training_memory(config, parameters, batch, grad_checkpoint=checkpoint, dtype=dtype, device_type=dev.type)
    return {
        "preset": preset,
        "batch": batch,
        "grad_checkpoint": checkpoint,
        "device": dev.type,
        "dtype": dtype,
        "parameters": parameters,
        "peak_gib": peak / GiB,
        "estimate_gib": plan.total / GiB,
        "estimate_over_measured": plan.total / peak,
        "step_s": times[-1],
        "loss_bpd": loss.item() / 0.6931471805599453,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="imagenet64", help="a preset or config.json")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--checkpoint", choices=("off", "on", "both"), default="both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--json", default=None, help="append the rows to this JSON list")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    checkpoints = {"off": [False], "on": [True], "both": [False, True]}[args.checkpoint]
    if args.one:  # the child: one measurement
        print(json.dumps(one(args.preset, int(args.batches), checkpoints[0], args.device, args.dtype)))
        return 0
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for ck in checkpoints:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                "--preset",
                args.preset,
                "--batches",
                str(batch),
                "--checkpoint",
                "on" if ck else "off",
                "--device",
                args.device,
                "--dtype",
                args.dtype,
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
            if done.returncode != 0:
                row = {
                    "preset": args.preset,
                    "batch": batch,
                    "grad_checkpoint": ck,
                    "error": done.stderr.strip()[-300:],
                }
            else:
                row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        path = Path(args.json)
        previous = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(previous + rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
