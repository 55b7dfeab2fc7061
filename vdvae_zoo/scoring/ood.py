"""Out-of-distribution detection with likelihood ratios (Havtorn, Frellsen, Hauberg and Maaløe, "Hierarchical VAEs
Know What They Don't Know", ICML 2021), on the one scoring engine (scoring.py).

Likelihood alone is a poor OOD score: models give some foreign data (flat, blurred or simple images) a *higher*
likelihood than their own. The hierarchy fixes this: compare the ELBO L(x) with the looser bound L^{>k}(x) whose
k lowest latent layers (in VDVAE's top-down order the *last* k decoder layers, the highest resolutions) come from
their conditional prior instead of the posterior, and score LLR^{>k}(x) = L(x) - L^{>k}(x).

What we match of their definition and code (JakobHavtorn/hvae-oodd, `scripts/ood-llr.py`), docs/ood.md:
- the k replaced layers are the lowest ones (nearest the pixels); their code's `decode_from_p = [True] * k + ...`
  over latents ordered z1 (bottom) first;
- the replaced layers take the *mean* of their conditional prior (their `use_mode=decode_from_p`);
  `prior_temperature=1` takes a prior sample instead;
- one posterior draw for each bound (their defaults `iw_samples_elbo = iw_samples_Lk = 1`), the same draw for the
  layers both bounds keep (our seed rule);
- the KL of the replaced layers is not counted (the paper's L^{>k}; see docs/ood.md for their script);
- sign: scores grow with out-of-distribution-ness: `bpd` (= -L in bits per dim) for the ELBO, and
  `llr_k{k}` = bpd_k{k} - bpd = LLR^{>k} / (D ln 2) for the ratios; OOD is the positive class of the metrics.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..data.datasets import Dataset, open_dataset
from .engine import ScoreOptions, ScoreTable, score_dataset, score_images

__all__ = ["ood_scores", "detection_metrics", "roc_curve", "roc_points", "evaluate_ood", "OODReport", "score_names"]

DataLike = str | os.PathLike | Dataset


def ood_scores(
    model,
    images,
    ks: Sequence[int] = (1,),
    *,
    seed: int = 0,
    prior_temperature: float = 0.0,
    batch_size: int | None = None,
    dtype: str | None = None,
    indices: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Per image of uint8 NHWC `images`, in bits per dim: `bpd` (the ELBO), and for each k `bpd_k{k}` (the bound
    L^{>k}, its k lowest layers from the conditional prior) and `llr_k{k}` (= bpd_k{k} - bpd, Havtorn et al.'s
    LLR^{>k}; larger: more out-of-distribution), plus `distortion_bpd` and `rate_bpd`. Image i draws with
    `image_seed(seed, indices[i])` (default i), as every score does."""
    indices = list(range(len(images))) if indices is None else list(indices)
    options = ScoreOptions(
        seed=seed, ks=tuple(ks), prior_temperature=prior_temperature, batch_size=batch_size, dtype=dtype
    )
    return score_images(model, images, indices, options)[0]


def score_names(ks: Sequence[int]) -> list[str]:
    """The detection scores, each larger for more out-of-distribution data: the ELBO's bpd, then each LLR^{>k}."""
    return ["bpd"] + [f"llr_k{k}" for k in ks]


def _curve(in_scores: ArrayLike, out_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates, precisions) at every distinct threshold, from the highest
    score down (a score at or above the threshold is called OOD), with the point (0, 0) first."""
    x_in, x_out = np.asarray(in_scores, float), np.asarray(out_scores, float)
    scores = np.concatenate([x_in, x_out])
    is_ood = np.concatenate([np.zeros(len(x_in)), np.ones(len(x_out))])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_ood = scores[order], is_ood[order]
    last_of_each = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tp, fp = np.cumsum(is_ood)[last_of_each], np.cumsum(1 - is_ood)[last_of_each]
    return np.r_[0.0, fp / len(x_in)], np.r_[0.0, tp / len(x_out)], np.r_[1.0, tp / (tp + fp)]


def roc_curve(in_scores: ArrayLike, out_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) at every distinct threshold, out-of-distribution positive
    (a score at or above the threshold is called OOD), from (0, 0) to (1, 1)."""
    fpr, tpr, _ = _curve(in_scores, out_scores)
    return fpr, tpr


def detection_metrics(in_scores: ArrayLike, out_scores: ArrayLike) -> dict[str, float]:
    """AUROC, AUPRC (average precision) and the false positive rate at 95% true positive rate, with the
    out-of-distribution images as the positive class and larger scores meaning more OOD. AUROC is the rank
    statistic: the probability that an OOD image scores above an in-distribution one (ties count half)."""
    x_in, x_out = np.asarray(in_scores, float), np.asarray(out_scores, float)
    if not len(x_in) or not len(x_out):
        raise ValueError("detection metrics need in-distribution and out-of-distribution scores")
    both = np.concatenate([x_in, x_out])
    if not np.isfinite(both).all():
        raise ValueError(
            f"{int((~np.isfinite(x_in)).sum())} in-distribution and {int((~np.isfinite(x_out)).sum())} "
            "out-of-distribution scores are not finite (NaN or inf): no metric of them means anything. "
            "Check the options (a huge --prior-temperature does this) and the model"
        )
    values, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based ranks, ties averaged
    out_ranks = mean_rank[inverse[len(x_in) :]].sum()
    auroc = (out_ranks - len(x_out) * (len(x_out) + 1) / 2) / (len(x_in) * len(x_out))
    fpr, tpr, precision = _curve(x_in, x_out)
    return {
        "auroc": float(auroc),
        "auprc": float(np.sum(np.diff(tpr) * precision[1:])),
        "fpr_at_95_tpr": float(fpr[np.argmax(tpr >= 0.95)]),
    }


@dataclass
class OODReport:
    """What `evaluate_ood` measured: per OOD set, each score's metrics; per image, every score (bits per dim)."""

    model: dict[str, Any]
    options: dict[str, Any]
    in_set: dict[str, Any]
    sets: list[dict[str, Any]]  # name, images, skipped, metrics {score: {auroc, auprc, fpr...}}
    per_image: list[dict[str, Any]] = field(default_factory=list, repr=False)  # set, index, path?, scores

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def lines(self) -> list[str]:
        """A table per OOD set: AUROC, AUPRC, FPR at 95% TPR of each score."""
        out = [
            f"in-distribution: {self.in_set['name']} ({self.in_set['images']} images); mean bpd "
            f"{self.in_set['mean_bpd']:.4f}"
        ]
        for s in self.sets:
            out.append(f"OOD: {s['name']} ({s['images']} images); mean bpd {s['mean_bpd']:.4f}")
            out.append(f"  {'score':<14}{'AUROC':>8}{'AUPRC':>8}{'FPR@95%TPR':>12}")
            for name, m in s["metrics"].items():
                label = "ELBO (bpd)" if name == "bpd" else "LLR>" + name.split("_k")[1]
                out.append(f"  {label:<14}{m['auroc']:>8.3f}{m['auprc']:>8.3f}{m['fpr_at_95_tpr']:>12.3f}")
        return out


def _open(data: DataLike, split: str) -> Dataset:
    return data if isinstance(data, Dataset) else open_dataset(data, split)


def evaluate_ood(
    model,
    in_data: DataLike,
    ood_data: Sequence[DataLike],
    ks: Sequence[int] = (1, 2),
    *,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
    prior_temperature: float = 0.0,
    batch_size: int | None = None,
    dtype: str | None = None,
    chunk: int = 256,
    state: None | str | os.PathLike = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[OODReport | None, dict[str, ScoreTable]]:
    """Score the in-distribution data and each OOD data set (paths as `vdvae-zoo eval` reads them, or Datasets)
    with the ELBO and LLR^{>k} for each k, and measure how well each score separates them.

    `limit`: a seeded random subset of each set. `state`: a file name; each set keeps its progress beside it
    (`STATE.0`, `STATE.1`, ...) and `resume` continues. Returns the report and each set's ScoreTable (the report
    is None on processes other than rank 0 under torchrun)."""
    options = ScoreOptions(
        seed=seed, ks=tuple(ks), prior_temperature=prior_temperature, batch_size=batch_size, dtype=dtype
    ).check(model.num_layers)
    if not ood_data:
        raise ValueError("give at least one out-of-distribution data set (--ood)")
    sets = [_open(in_data, split)] + [_open(d, split) for d in ood_data]
    names = _unique([d.name for d in sets])
    tables: dict[str, ScoreTable] = {}
    for j, (name, dataset) in enumerate(zip(names, sets, strict=False)):
        positions = None
        if limit is not None and limit < len(dataset):
            positions = np.sort(np.random.default_rng(seed).choice(len(dataset), size=limit, replace=False))
        where = None if state is None else Path(f"{state}.{j}")
        table = score_dataset(
            model,
            dataset,
            options,
            positions=positions,
            chunk=chunk,
            state=where,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            desc=f"scoring {name}",
        )
        if table is not None:
            if not len(table):
                raise ValueError(f"none of the images of {name} could be read")
            tables[name] = table
    if not tables:
        return None, tables
    in_name = names[0]
    scores = score_names(options.ks)
    report = OODReport(
        model=model.provenance.to_dict(),
        options=options.record(),
        in_set={
            "name": in_name,
            "images": len(tables[in_name]),
            "mean_bpd": tables[in_name].mean("bpd")[0],
            "skipped": len(tables[in_name].skipped),
        },
        sets=[],
    )
    for name in names[1:]:
        metrics = {
            score: detection_metrics(tables[in_name].columns[score], tables[name].columns[score]) for score in scores
        }
        report.sets.append(
            {
                "name": name,
                "images": len(tables[name]),
                "mean_bpd": tables[name].mean("bpd")[0],
                "skipped": len(tables[name].skipped),
                "metrics": metrics,
            }
        )
    for name, dataset in zip(names, sets, strict=False):
        for row in tables[name].rows(dataset):
            report.per_image.append({"set": name, **row})
    return report, tables


def _unique(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        candidate, n = name, 2
        while candidate in out:
            candidate, n = f"{name} ({n})", n + 1
        out.append(candidate)
    return out


def roc_points(report: OODReport, tables: dict[str, ScoreTable]) -> dict[str, list[tuple[float, float]]]:
    """The ROC curve of every (OOD set, score), as (FPR, TPR) points, for a chart."""
    in_table = tables[report.in_set["name"]]
    series = {}
    for s in report.sets:
        for score in s["metrics"]:
            fpr, tpr = roc_curve(in_table.columns[score], tables[s["name"]].columns[score])
            label = "ELBO" if score == "bpd" else "LLR>" + score.split("_k")[1]
            key = f"{label}" if len(report.sets) == 1 else f"{s['name']}: {label}"
            series[f"{key} (AUROC {s['metrics'][score]['auroc']:.3f})"] = list(
                zip(fpr.tolist(), tpr.tolist(), strict=False)
            )
    return series
