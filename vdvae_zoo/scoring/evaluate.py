"""Evaluating a model on a data set: the paper's test-set numbers, on the one scoring engine (scoring.py).

Every image is scored with its own seed (`batching.image_seed(seed, i)`, i its index in the data set), so a
result depends only on the image, the seed and the options: not on the batch size, on a resume, or on the number
of processes (scoring.py says how). `vdvae-zoo bpd` on a folder gives the same per-image numbers.

How this differs from the original's `evaluate` (train.py): it averages per-batch means over a
DistributedSampler, which pads the data with duplicates to a multiple of the number of processes, and drops the
last partial batch of each process (`drop_last=True`). Ours is the plain mean over every image once. On the
test sets (10,000 to 50,000 images, batches of 4 to 16) the difference is below the third decimal of the
reported bits per dim.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datasets import Dataset, open_dataset
from .engine import ScoreOptions, ScoreTable, score_dataset

__all__ = ["evaluate", "EvalReport", "bits_by_resolution"]


@dataclass
class EvalReport:
    """What `evaluate` measured. Bits per dim unless the name says otherwise; per-image values in `per_image`."""

    data: str
    split: str
    rule: str
    images: int
    mean_bpd: float
    stderr_bpd: float | None
    ci95_bpd: list[float] | None
    mean_distortion_bpd: float
    mean_rate_bpd: float
    bits_per_resolution: dict[str, float]  # mean bits per image held by the layers at each resolution
    limit: int | None = None
    seed: int = 0
    samples: int = 1
    mean_bpd_iw: float | None = None
    stderr_bpd_iw: float | None = None
    paper_bpd: float | None = None
    paper_difference_in_stderr: float | None = None
    model: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    device: str = "cpu"
    elapsed_s: float = 0.0
    images_per_s: float = 0.0
    skipped: list[list[Any]] = field(default_factory=list)  # [index, reason] of images that could not be read
    per_image: dict[str, list[float]] = field(default_factory=dict, repr=False)  # index, bpd, ...

    def card_result(self, command: str = "") -> dict[str, Any]:
        """This result as a model card's model-index entry (cards.measured_result): the data, split, mean
        bits per dim, and the options it depends on."""
        from ..weights.cards import measured_result

        args = {"seed": self.seed, "samples": self.samples, "images": self.images}
        if self.limit is not None:
            args["limit"] = self.limit
        return measured_result(self.data, self.split, self.mean_bpd, args=args, command=command)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def lines(self) -> list[str]:
        """A terminal table."""
        se = (
            f" ± {self.stderr_bpd:.4f} (standard error; 95% interval {self.ci95_bpd[0]:.4f} to {self.ci95_bpd[1]:.4f})"
            if self.stderr_bpd is not None and self.ci95_bpd is not None
            else " (one image: no standard error)"
        )
        out = [
            f"data: {self.data}, split {self.split}: {self.rule}",
            f"images: {self.images}"
            + (f" (a random subset of {self.limit}, seed {self.seed})" if self.limit else "")
            + (f", {len(self.skipped)} skipped (unreadable)" if self.skipped else ""),
            f"bpd: {self.mean_bpd:.4f}{se}",
            f"  distortion {self.mean_distortion_bpd:.4f} + rate {self.mean_rate_bpd:.4f} bits per dim",
        ]
        if self.mean_bpd_iw is not None:
            out.append(
                f"bpd_iw ({self.samples} samples): {self.mean_bpd_iw:.4f}"
                + (f" ± {self.stderr_bpd_iw:.4f}" if self.stderr_bpd_iw is not None else "")
            )
        if self.paper_bpd is not None:
            diff = (
                ""
                if self.paper_difference_in_stderr is None
                else f" (ours - paper = {self.paper_difference_in_stderr:+.1f} standard errors)"
            )
            out.append(f"paper: {self.paper_bpd} bpd{diff}")
        out.append(
            "bits per image by resolution: " + ", ".join(f"{r}: {b:.1f}" for r, b in self.bits_per_resolution.items())
        )
        sha = self.model.get("sha256") or "?"
        out.append(
            f"model: {self.model.get('name', '?')} sha256 {sha[:16]}..., "
            f"{self.dtype} on {self.device}; {self.elapsed_s:.1f} s, {self.images_per_s:.1f} images/s"
        )
        return out


def bits_by_resolution(kl_sum_nats: np.ndarray, images: int, layer_resolutions: list[int]) -> dict[str, float]:
    """Mean bits per image held by the layers at each resolution, from the layers' KL summed over `images`."""
    out: dict[str, float] = {}
    for res, nats in zip(layer_resolutions, kl_sum_nats, strict=False):
        out[str(res)] = out.get(str(res), 0.0) + float(nats) / images / np.log(2)
    return out


def evaluate(
    model,
    data: str | os.PathLike | Dataset,
    *,
    split: str = "test",
    limit: int | None = None,
    samples: int = 1,
    seed: int = 0,
    batch_size: int | None = None,
    dtype: str | None = None,
    chunk: int = 256,
    state: None | str | os.PathLike = None,
    resume: bool = False,
    overwrite: bool = False,
    paper_bpd: float | None = None,
    model_info: dict[str, Any] | None = None,
    progress: bool = True,
) -> EvalReport | None:
    """Score every image of `split` of `data` (a path, see datasets.py, or a Dataset) with `model`.

    `limit`: a random subset of that many images (seeded by `seed`). `samples` K > 1 adds the importance-weighted
    bound. `state`: a file for finished chunks (default: none, unless `resume`); `resume` continues from it; an
    existing one is refused without `resume` unless `overwrite`. `paper_bpd`: the reported number to compare with
    (default: the manifest entry's, when the model was loaded by name). `model_info` is added to the report's
    `model` (which holds `model.provenance`). Returns the report (None on processes other than rank 0 under
    torchrun)."""
    dataset = data if isinstance(data, Dataset) else open_dataset(data, split)
    positions = np.arange(len(dataset))
    if limit is not None and limit < len(dataset):
        positions = np.sort(np.random.default_rng(seed).choice(len(dataset), size=limit, replace=False))
    state_path = Path(state) if state is not None else (Path("vdvae-zoo-eval.state.jsonl") if resume else None)
    provenance = model.provenance
    info = {**provenance.to_dict(), **(model_info or {})}
    options = ScoreOptions(seed=seed, samples=samples, batch_size=batch_size, dtype=dtype)
    table = score_dataset(
        model,
        dataset,
        options,
        positions=positions,
        chunk=chunk,
        state=state_path,
        resume=resume,
        overwrite=overwrite,
        model_id=info.get("sha256"),
        progress=progress,
        desc="evaluating",
    )
    if table is None:
        return None
    return _report(
        model,
        dataset,
        table,
        info,
        limit if limit is not None and limit < len(dataset) else None,
        paper_bpd if paper_bpd is not None else provenance.paper_bpd,
    )


def _report(
    model, dataset: Dataset, table: ScoreTable, info: dict[str, Any], limit: int | None, paper_bpd: float | None
) -> EvalReport:
    if len(table) == 0:
        raise ValueError(f"none of the {len(table.skipped)} images of {dataset.name} could be read")
    mean, se = table.mean("bpd")
    options = table.options
    report = EvalReport(
        data=dataset.name,
        split=dataset.split,
        rule=dataset.rule,
        images=len(table),
        mean_bpd=mean,
        stderr_bpd=se,
        ci95_bpd=[mean - 1.96 * se, mean + 1.96 * se] if se is not None else None,
        mean_distortion_bpd=table.mean("distortion_bpd")[0],
        mean_rate_bpd=table.mean("rate_bpd")[0],
        bits_per_resolution=bits_by_resolution(table.kl_sum_nats, len(table), model.layer_resolutions),
        limit=limit,
        seed=options.seed,
        samples=options.samples,
        paper_bpd=paper_bpd,
        model=info,
        dtype=str(options.dtype or model.compute_dtype).replace("torch.", ""),
        device=str(model.device),
        elapsed_s=table.elapsed_s,
        images_per_s=table.scored_here / table.elapsed_s if table.elapsed_s > 0 else 0.0,
        skipped=[[i, why] for i, why in table.skipped],
        per_image={name: values.tolist() for name, values in table.columns.items()},
    )
    if options.samples > 1:
        report.mean_bpd_iw, report.stderr_bpd_iw = table.mean("bpd_iw")
    if paper_bpd is not None and se:
        report.paper_difference_in_stderr = (mean - paper_bpd) / se
    return report
