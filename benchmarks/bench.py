"""Throughput, peak memory and GFLOP/s of VDVAE likelihood and sampling, fast paths against the plain way.

    python benchmarks/bench.py --preset cifar10 --batch-size 8                 # CPU, all variants
    python benchmarks/bench.py --preset ffhq256 --device cuda --batch-size 16 --variants reference,fp32,bf16
    python benchmarks/bench.py --preset cifar10 --variants compile --json out.json

Random weights (throughput does not depend on them). Every (mode, variant) runs in its own subprocess, so its
peak memory is its own: max RSS on the CPU, torch.cuda.max_memory_allocated on CUDA (`memory_before_bytes`: the
same just before the first call, i.e. weights and runtime). Times are the median of
`--repeats` timed calls after `--warmup` untimed ones (CUDA synchronised). Variants:

  reference      the plain way: fp32, eager, NCHW, torch.no_grad, calling the modules directly
  fp32           model.likelihood / model.sample with the defaults (inference_mode, exact)
  tf32           fp32 with TensorFloat-32 convolutions and matmuls (CUDA only; the same as fp32 on a CPU)
  channels_last  + NHWC memory layout
  bf16           + bfloat16 autocast (likelihood head, latent distributions and KL stay float32)
  bf16_cl        bf16 + channels_last
  compile        torch.compile of every residual block (fp32), compile time reported separately
  compile_bf16   the same with bf16

On CUDA "float32" means float32: TF32, which PyTorch's cuDNN convolutions use by default, is switched off for
every call except those of the tf32 variant, so the reference and fp32 are exact float32.

Each variant's time is measured interleaved with the reference's, in the same process, and reported as
`speedup_vs_reference`. GFLOP/s uses the FLOPs torch.utils.flop_counter counts for one batch (convolutions;
elementwise work is not
counted). The bpd change of each variant is measured on real photos (scikit-image's, centre-cropped) with the
same random draws as fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import vdvae_zoo
from vdvae_zoo import VDVAE
from vdvae_zoo.config import resolve_config
from vdvae_zoo.data.images import sample_photos
from vdvae_zoo.nn.dmol import dmol_sample

VARIANTS = {
    "reference": {},
    "fp32": {},
    "tf32": {},
    "channels_last": {"channels_last": True},
    "bf16": {"dtype": "bfloat16"},
    "bf16_cl": {"dtype": "bfloat16", "channels_last": True},
    "compile": {"compile": True},
    "compile_bf16": {"compile": True, "dtype": "bfloat16"},
}


def photos(n: int, size: int) -> np.ndarray:
    """n real photos at size x size (scikit-image's sample images, centre-cropped; random pixels without it)."""
    try:
        pics = sample_photos(8, size)
    except ImportError:
        pics = list(np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8))
    return np.stack([pics[i % len(pics)] for i in range(n)])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(preset: str, device: torch.device) -> VDVAE:
    """Random weights as initialised, except that the zero-initialised last convolutions get small values so
    every layer does work and the outputs are not degenerate. One copy of the weights is ever made, so the
    memory peak of building stays below that of inference."""
    torch.manual_seed(0)
    model = VDVAE(resolve_config(preset))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not (name.endswith("bias") or "bias_xs" in name) and not p.any():
                p.normal_(0.0, 1e-2)
    return model.to(device).eval()


def make_call(model: VDVAE, mode: str, variant: str, images: torch.Tensor):
    batch = images.shape[0]
    temperature = [0.8] * model.num_layers
    if variant == "reference":

        def call():
            with torch.no_grad():
                if mode == "likelihood":
                    return model.forward(images)["neg_elbo"]
                params, _ = model.decoder(batch, temperatures=temperature)
                return dmol_sample(params, model.config.num_mixtures)
    elif mode == "likelihood":

        def call():
            return model.likelihood(images, batch_size=batch)
    else:

        def call():
            return model.sample(batch, temperature=0.8, batch_size=batch)

    return call


def with_tf32(call, enabled: bool):
    """`call` with TF32 convolutions and matmuls on or off (global switches, restored after each call)."""

    def wrapped():
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
        try:
            return call()
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    return wrapped


def elbo_bpd(model: VDVAE, variant: str, images: torch.Tensor) -> list:
    torch.manual_seed(123)
    if variant == "reference":
        with torch.no_grad():
            elbo = model.forward(images)["neg_elbo"].float().cpu()
    else:
        elbo = model.likelihood(images, batch_size=images.shape[0]).neg_elbo
    return (elbo / np.log(2)).tolist()


def run_variant(
    preset: str, mode: str, variant: str, batch: int, device: str, repeats: int, warmup: int, keep_freed: bool = False
) -> dict:
    """Measure one variant in this process: its peak memory first (before anything else runs), then its time
    interleaved with the reference path's on a second copy of the same weights, so that a slow moment of a
    shared machine hits both and the ratio stays fair."""
    dev = torch.device(device)
    if keep_freed:  # for both the variant and its reference: it is a property of the process
        vdvae_zoo.keep_freed_memory()
    model = build(preset, dev)
    if variant != "reference":
        model.optimize(**VARIANTS[variant])
    images = torch.from_numpy(photos(batch, model.config.image_size))
    call = with_tf32(make_call(model, mode, variant, images), variant == "tf32")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    torch.manual_seed(0)
    call()
    sync(dev)
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        call()
    sync(dev)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    reference = build(preset, dev)
    ref_call = with_tf32(make_call(reference, mode, "reference", images), False)
    ref_call()
    times, ref_times = [], []
    for i in range(repeats):
        pair = ((ref_call, ref_times), (call, times))
        for fn, bucket in pair if i % 2 == 0 else pair[::-1]:  # alternate who goes first: no order bias
            torch.manual_seed(i)
            sync(dev)
            t0 = time.perf_counter()
            fn()
            sync(dev)
            bucket.append(time.perf_counter() - t0)
    seconds, ref_seconds = statistics.median(times), statistics.median(ref_times)
    result = {
        "preset": preset,
        "mode": mode,
        "variant": variant,
        "batch_size": batch,
        "device": str(dev),
        "keep_freed_memory": keep_freed,
        "tf32": variant == "tf32",
        "seconds_per_batch": seconds,
        "images_per_s": batch / seconds,
        "first_call_s": first,
        "reference_seconds_per_batch": ref_seconds,
        "speedup_vs_reference": ref_seconds / seconds,
        "peak_memory_bytes": peak,
        "memory_before_bytes": before,
        "times": times,
        "reference_times": ref_times,
    }
    # Convolution FLOPs are linear in the batch: count one image without autograd and scale. (Counting the whole
    # batch with autograd on built the training graph: 12.3 GB per ffhq256 image, the H200's "likelihood out of
    # memory at batch 16" of issue #26 was this harness's, not the product's.)
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        if mode == "likelihood":
            reference.forward(images[:1])
        else:
            dmol_sample(
                reference.decoder(1, temperatures=[0.8] * reference.num_layers)[0], reference.config.num_mixtures
            )
    result["flops_per_batch"] = counter.get_total_flops() * batch
    result["gflop_per_s"] = result["flops_per_batch"] / seconds / 1e9
    if mode == "likelihood":
        result["bpd"] = with_tf32(lambda: elbo_bpd(model, variant, images), variant == "tf32")()
        ref_bpd = np.array(with_tf32(lambda: elbo_bpd(reference, "reference", images), False)())
        result["bpd_mean"] = float(np.mean(result["bpd"]))
        result["bpd_max_abs_change"] = float(np.abs(np.array(result["bpd"]) - ref_bpd).max())
    if variant.startswith("compile"):
        result["compiled"] = model.compiled
    return result


def machine(device: str) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "vdvae_zoo": vdvae_zoo.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    try:
        cpu = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        flags = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")]
        info["cpu"] = cpu[0] if cpu else platform.processor()
        info["cpu_bf16"] = bool(flags) and ("avx512_bf16" in flags[0] or "amx_bf16" in flags[0])
    except OSError:
        info["cpu"] = platform.processor()
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cifar10", help="A preset name or a config.json path.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", default="likelihood,sample")
    parser.add_argument("--variants", default="reference,fp32,channels_last,bf16,bf16_cl")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", default=None, help="Write all results here.")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="Call vdvae_zoo.keep_freed_memory() in each worker (glibc: no page faults per tensor).",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # one measurement, in a fresh process
        spec = json.loads(args.worker)
        print("RESULT " + json.dumps(run_variant(**spec)), flush=True)
        return

    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    results = []
    report = {
        "machine": machine(args.device),
        "args": {k: v for k, v in vars(args).items() if k != "worker"},
        "results": results,
    }
    for mode in args.modes.split(","):
        for variant in variants:
            spec = dict(
                preset=args.preset,
                mode=mode,
                variant=variant,
                batch=args.batch_size,
                device=args.device,
                repeats=args.repeats,
                warmup=args.warmup,
                keep_freed=args.keep_freed_memory,
            )
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=os.environ
            )
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"{mode:10s} {variant:14s} FAILED: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            r = json.loads(lines[0][len("RESULT ") :])
            results.append(r)
            if args.json:  # after every measurement, so a run cut short by a time limit keeps what it measured
                Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
            extra = f"  bpd {r['bpd_mean']:.4f} (max change {r['bpd_max_abs_change']:.4f})" if "bpd" in r else ""
            if "compiled" in r:
                extra += f"  compiled={r['compiled']} first call {r['first_call_s']:.1f}s"
            print(
                f"{mode:10s} {variant:14s} {r['seconds_per_batch'] * 1e3:9.1f} ms/batch {r['images_per_s']:8.2f} img/s "
                f"{r['speedup_vs_reference']:5.2f}x  {r['gflop_per_s']:7.1f} GFLOP/s  "
                f"peak {r['peak_memory_bytes'] / 2**20:8.0f} MiB{extra}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
