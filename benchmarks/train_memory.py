"""Peak memory and time of one training step (forward, backward, gradient clipping, AdamW, EMA), with and without
gradient checkpointing, against `vdvae_zoo.compute.memory.training_memory`'s estimate. One process per measurement, so
each peak is its own: max RSS on the CPU, `max_memory_allocated` on CUDA.

    python benchmarks/train_memory.py --preset imagenet64 --batches 1,2,4 --json out.json
    python benchmarks/train_memory.py --preset ffhq256 --batches 1 --checkpoint both

A step is the trainer's own (`Trainer.train_step`: micro-batches, clipping, AdamW, EMA), on a folder of random
images with the preset's random weights (memory does not depend on the pixels): two steps, the second timed.

    python benchmarks/train_memory.py --preset imagenet64 --batches 2 --grad-accumulation 4 --checkpoint on
    python benchmarks/train_memory.py --preset cifar10 --batches 2,8 --dtype bfloat16
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


def one(preset: str, batch: int, checkpoint: bool, device: str, dtype: str, accumulation: int = 1) -> dict:
    """One measurement: two steps of the real trainer (`Trainer.train_step`) in this process."""
    import tempfile

    import numpy as np
    import torch
    from PIL import Image

    from vdvae_zoo.config import resolve_config
    from vdvae_zoo.training.options import TrainOptions
    from vdvae_zoo.training.trainer import Trainer

    config = resolve_config(preset)
    size, channels = config.image_size, config.image_channels
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        (Path(tmp) / "data").mkdir()
        for i in range(max(4, 2 * batch * accumulation)):
            pixels = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
            Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(Path(tmp) / "data" / f"{i}.png")
        options = TrainOptions(
            data=str(Path(tmp) / "data"),
            out=str(Path(tmp) / "run"),
            config=preset,
            steps=2,
            batch_size=batch,
            grad_accumulation=accumulation,
            grad_checkpoint=checkpoint,
            ignore_memory_plan=True,
            device=device,
            dtype=dtype,
            val_fraction=0.0,
            skip_threshold=0.0,
        )
        trainer = Trainer(options)
        plan = trainer.memory.plan()
        times, record = [], {}
        for _ in range(2):
            t0 = time.perf_counter()
            record = trainer.train_step()
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        if trainer.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(trainer.device)
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        parameters = trainer.memory.parameters
    return {
        "preset": preset,
        "batch": batch,
        "grad_accumulation": accumulation,
        "grad_checkpoint": checkpoint,
        "device": trainer.device.type,
        "dtype": dtype,
        "parameters": parameters,
        "peak_gib": peak / GiB,
        "estimate_gib": plan.total / GiB,
        "estimate_over_measured": plan.total / peak,
        "step_s": times[-1],
        "loss_bpd": record["loss_bpd"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="imagenet64", help="a preset or config.json")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--checkpoint", choices=("off", "on", "both"), default="both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--grad-accumulation", type=int, default=1, help="micro-batches per update")
    parser.add_argument("--json", default=None, help="append the rows to this JSON list")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    checkpoints = {"off": [False], "on": [True], "both": [False, True]}[args.checkpoint]
    if args.one:  # the child: one measurement
        print(
            json.dumps(
                one(args.preset, int(args.batches), checkpoints[0], args.device, args.dtype, args.grad_accumulation)
            )
        )
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
                "--grad-accumulation",
                str(args.grad_accumulation),
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
