"""The temperature sweep of `vdvae-zoo fid` on a model trained here, against held-out photo crops.

    python benchmarks/fid_sweep.py --model runs/tiny --ref held/ --num 300 -t 0.6 -t 0.8 -t 1.0 \\
        --out docs/images/fid_sweep_standin.png [--inception-weights weights-inception-2015-12-05-6726825d.pth]

With torch-fidelity's Inception weights (`--inception-weights`, or downloaded once where there is internet) the
numbers are FIDs. Without them (this workplace: no internet) the sweep runs on a stand-in: torch-fidelity's
Inception architecture with random weights (seeded) whose batch-norm statistics come from photos (`standin_inception`,
which the tests use too). Its numbers show the command's output and how the sweep behaves, not sample quality, and
are comparable with no published FID.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def standin_inception(path: str | Path, photos: np.ndarray, seed: int = 0) -> Path:
    """Write torch-fidelity's Inception (inception-v3-compat) with random weights from `seed` and batch-norm running
    statistics averaged over `photos` (uint8 NHWC) to `path`: without them a random network's features are nearly
    0 and every FID nearly 0, which would prove nothing."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with (
        mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None),
        mock.patch("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", lambda *a, **k: {}),
    ):
        torch.manual_seed(seed)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # the plain average over the batches seen
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(np.ascontiguousarray(photos)).permute(0, 3, 1, 2).contiguous())
    torch.save(net.state_dict(), path)
    return Path(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--ref", required=True)
    parser.add_argument("--num", type=int, default=300)
    parser.add_argument("-t", "--temperature", type=float, action="append", default=None)
    parser.add_argument("--inception-weights", default=None)
    parser.add_argument("--out", required=True, help="the chart (PNG); the report goes beside it (.json)")
    args = parser.parse_args()
    import vdvae_zoo
    from vdvae_zoo.data.images import photo_crops

    weights = args.inception_weights
    if weights is None:
        weights = standin_inception(Path(args.out).with_suffix(".standin.pth"), np.stack(photo_crops(16, 32, 99)))
    report = vdvae_zoo.fid(
        vdvae_zoo.load(args.model),
        args.ref,
        num=args.num,
        temperatures=args.temperature or [0.6, 0.8, 1.0],
        kid=True,
        inception_weights=weights,
    )
    report.chart(args.out)
    Path(args.out).with_suffix(".json").write_text(json.dumps(report.to_dict(), indent=1, default=str) + "\n")
    if args.inception_weights is None:
        Path(weights).unlink()
    for row in report.rows:
        print(f"T={row.temperature}: FID {row.fid:.3f}  KID {row.kid_mean:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
