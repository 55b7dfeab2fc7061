"""Evaluating a model on a data set: the paper's test-set numbers, streamed, resumable, shared across processes.

Images are scored in chunks of `chunk` images, each image with its own seed (`batching.image_seed(seed, i)`, i
its index in the data set), so a result depends only on the image and the seed: not on the batch size, on a
resume, or on the number of processes. Under torchrun, chunk k goes to process k % world_size and every
per-image result is gathered exactly (no padding duplicates, no dropped tail). Finished chunks are appended to
a state file; `resume=True` continues from it after checking that the model, the data and the options are the
same.

How this differs from the original's `evaluate` (train.py): it averages per-batch means over a
DistributedSampler, which pads the data with duplicates to a multiple of the number of processes, and drops the
last partial batch of each process (`drop_last=True`). Ours is the plain mean over every image once. On the
test sets (10,000 to 50,000 images, batches of 4 to 16) the difference is below the third decimal of the
reported bits per dim.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from .batching import image_seed
from .datasets import Dataset, open_dataset
from .files import atomic_write

__all__ = ["evaluate", "EvalReport", "model_fingerprint"]


@dataclass
class EvalReport:
    """What `evaluate` measured. Bits per dim unless the name says otherwise; per-image values in `images`."""

    data: str
    split: str
    rule: str
    images: int
    mean_bpd: float
    stderr_bpd: Optional[float]
    ci95_bpd: Optional[List[float]]
    mean_distortion_bpd: float
    mean_rate_bpd: float
    bits_per_resolution: Dict[str, float]   # mean bits per image held by the layers at each resolution
    limit: Optional[int] = None
    seed: int = 0
    samples: int = 1
    mean_bpd_iw: Optional[float] = None
    stderr_bpd_iw: Optional[float] = None
    paper_bpd: Optional[float] = None
    paper_difference_in_stderr: Optional[float] = None
    model: Dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    device: str = "cpu"
    elapsed_s: float = 0.0
    images_per_s: float = 0.0
    per_image: Dict[str, List[float]] = field(default_factory=dict, repr=False)  # index, bpd, ...

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def lines(self) -> List[str]:
        """A terminal table."""
        se = f" ± {self.stderr_bpd:.4f} (standard error; 95% interval {self.ci95_bpd[0]:.4f} to " \
             f"{self.ci95_bpd[1]:.4f})" if self.stderr_bpd is not None else " (one image: no standard error)"
        out = [f"data: {self.data}, split {self.split}: {self.rule}",
               f"images: {self.images}" + (f" (a random subset of {self.limit}, seed {self.seed})" if self.limit else ""),
               f"bpd: {self.mean_bpd:.4f}{se}",
               f"  distortion {self.mean_distortion_bpd:.4f} + rate {self.mean_rate_bpd:.4f} bits per dim"]
        if self.mean_bpd_iw is not None:
            out.append(f"bpd_iw ({self.samples} samples): {self.mean_bpd_iw:.4f}"
                       + (f" ± {self.stderr_bpd_iw:.4f}" if self.stderr_bpd_iw is not None else ""))
        if self.paper_bpd is not None:
            diff = "" if self.paper_difference_in_stderr is None else \
                f" (ours - paper = {self.paper_difference_in_stderr:+.1f} standard errors)"
            out.append(f"paper: {self.paper_bpd} bpd{diff}")
        out.append("bits per image by resolution: " + ", ".join(f"{r}: {b:.1f}" for r, b in
                                                                self.bits_per_resolution.items()))
        out.append(f"model: {self.model.get('name', '?')} sha256 {self.model.get('sha256', '?')[:16]}..., "
                   f"{self.dtype} on {self.device}; {self.elapsed_s:.1f} s, {self.images_per_s:.1f} images/s")
        return out


def model_fingerprint(model) -> str:
    """sha256 of a model's tensors (names, shapes, bytes): what a resumed evaluation must be run with."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _mean_se(values: np.ndarray) -> tuple:
    mean = float(values.mean())
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return mean, se


def _dist() -> tuple:
    import torch.distributed as dist
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _read_state(paths: List[Path], header: Dict[str, Any]) -> Dict[int, Dict[str, Any]]:
    done: Dict[int, Dict[str, Any]] = {}
    for path in paths:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            continue
        differing = [k for k in header if lines[0].get(k) != header[k]]
        if differing:
            raise ValueError(f"--resume: {path} was written for another evaluation (differing: {', '.join(differing)}); "
                             "run without --resume to start again, or with the same model, data and options")
        done.update({record["chunk"]: record for record in lines[1:]})
    return done


def evaluate(model, data: Union[str, os.PathLike, Dataset], *, split: str = "test", limit: Optional[int] = None,
             samples: int = 1, seed: int = 0, batch_size: Optional[int] = None, dtype: Optional[str] = None,
             chunk: int = 256, state: Union[None, str, os.PathLike] = None, resume: bool = False,
             paper_bpd: Optional[float] = None, model_info: Optional[Dict[str, Any]] = None,
             progress: bool = True) -> Optional[EvalReport]:
    """Score every image of `split` of `data` (a path, see datasets.py, or a Dataset) with `model`.

    `limit`: a random subset of that many images (seeded by `seed`). `samples` K > 1 adds the importance-weighted
    bound. `state`: a file for finished chunks (default: none, unless `resume`); `resume` continues from it.
    `paper_bpd`: the reported number to compare with. Returns the report (None on processes other than rank 0
    under torchrun)."""
    dataset = data if isinstance(data, Dataset) else open_dataset(data, split)
    if dataset.size is not None and dataset.size != model.config.image_size:
        raise ValueError(f"{dataset.name} has {dataset.size}x{dataset.size} images; this model takes "
                         f"{model.config.image_size}x{model.config.image_size}")
    positions = np.arange(len(dataset))
    if limit is not None and limit < len(dataset):
        positions = np.sort(np.random.default_rng(seed).choice(len(dataset), size=limit, replace=False))
    chunks = [positions[i:i + chunk] for i in range(0, len(positions), chunk)]
    world, rank = _dist()
    info = dict(model_info or {})
    info.setdefault("sha256_tensors", model_fingerprint(model))
    header = {"model": info["sha256_tensors"], "data": dataset.fingerprint, "split": dataset.split, "limit": limit,
              "samples": samples, "seed": seed, "chunk": chunk, "dtype": str(dtype or model.compute_dtype).replace("torch.", "")}
    state_path = Path(state) if state is not None else (Path("vdvae-zoo-eval.state.jsonl") if resume else None)
    mine = state_path.with_name(f"{state_path.name}.rank{rank}") if state_path and world > 1 else state_path
    done = _read_state(sorted(state_path.parent.glob(state_path.name + "*")), header) \
        if resume and state_path and state_path.parent.is_dir() else {}
    if mine is not None:
        kept = [json.dumps(header)] + [json.dumps(r) for k, r in sorted(done.items()) if k % world == rank]
        atomic_write(mine, "\n".join(kept) + "\n")
    from huggingface_hub.utils import tqdm
    todo = [k for k in range(len(chunks)) if k % world == rank and k not in done]
    start = time.perf_counter()
    with tqdm(total=len(positions), initial=sum(len(r["index"]) for r in done.values()), unit="img",
              desc="evaluating", disable=not progress or rank != 0) as bar:
        for k in todo:
            index = chunks[k]
            images = dataset.read(index.tolist())
            r = model.likelihood(images, n_samples=samples, batch_size=batch_size, dtype=dtype,
                                 seeds=[image_seed(seed, int(i)) for i in index])
            record = {"chunk": k, "index": index.tolist(), "bpd": r.bpd.tolist(),
                      "distortion_bpd": r.distortion_bpd.tolist(), "rate_bpd": r.rate_bpd.tolist(),
                      "kl_sum": r.kl.double().sum(0).tolist()}
            if r.bpd_iw is not None:
                record["bpd_iw"] = r.bpd_iw.tolist()
            done[k] = record
            if mine is not None:
                with open(mine, "a") as f:
                    f.write(json.dumps(record) + "\n")
            bar.update(len(index) * world)
    elapsed = time.perf_counter() - start
    scored_here = sum(len(chunks[k]) for k in todo)
    if world > 1:
        import torch.distributed as dist
        gathered: List[Optional[Dict[int, Dict[str, Any]]]] = [None] * world
        dist.all_gather_object(gathered, {k: v for k, v in done.items() if k % world == rank})
        done = {k: v for part in gathered for k, v in part.items()}
    if mine is not None:
        mine.unlink(missing_ok=True)  # complete: nothing left to resume
    if rank != 0:
        return None
    records = [done[k] for k in sorted(done)]
    if len(records) != len(chunks):
        raise RuntimeError(f"evaluation incomplete: {len(records)} of {len(chunks)} chunks")
    per_image = {name: [v for rec in records for v in rec[name]] for name in
                 ("index", "bpd", "distortion_bpd", "rate_bpd") + (("bpd_iw",) if samples > 1 else ())}
    bpd = np.array(per_image["bpd"])
    mean, se = _mean_se(bpd)
    kl_mean_bits = np.sum([rec["kl_sum"] for rec in records], axis=0) / len(bpd) / math.log(2)
    by_res: Dict[str, float] = {}
    for res, bits in zip([b.resolution for b in model.config.decoder_blocks], kl_mean_bits):
        by_res[str(res)] = by_res.get(str(res), 0.0) + float(bits)
    report = EvalReport(
        data=dataset.name, split=dataset.split, rule=dataset.rule, images=len(bpd), mean_bpd=mean, stderr_bpd=se,
        ci95_bpd=[mean - 1.96 * se, mean + 1.96 * se] if se is not None else None,
        mean_distortion_bpd=float(np.mean(per_image["distortion_bpd"])), mean_rate_bpd=float(np.mean(per_image["rate_bpd"])),
        bits_per_resolution=by_res, limit=limit if limit is not None and limit < len(dataset) else None, seed=seed,
        samples=samples, paper_bpd=paper_bpd, model=info, dtype=header["dtype"], device=str(model.device),
        elapsed_s=elapsed, images_per_s=scored_here * world / elapsed if elapsed > 0 else 0.0, per_image=per_image)
    if samples > 1:
        report.mean_bpd_iw, report.stderr_bpd_iw = _mean_se(np.array(per_image["bpd_iw"]))
    if paper_bpd is not None and se:
        report.paper_difference_in_stderr = (mean - paper_bpd) / se
    return report
