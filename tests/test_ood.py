"""Out-of-distribution scores (#22): the bounds L^{>k} and LLR^{>k} as Havtorn et al. define them, on the one
scoring engine, and detection metrics that are the rank statistics they claim to be."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import random_images
from PIL import Image

import vdvae_zoo
from vdvae_zoo.cli import main
from vdvae_zoo.compute.batching import image_seed
from vdvae_zoo.nn.dmol import dmol_nll
from vdvae_zoo.scoring.ood import detection_metrics, evaluate_ood, ood_scores, roc_curve


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(11)
    config = vdvae_zoo.VDVAEConfig(
        image_size=16,
        width=16,
        zdim=4,
        num_mixtures=2,
        enc_blocks="16x1,16d2,8x1,8d2,4x1,4d4,1x1",
        dec_blocks="1x1,4m1,4x1,8m4,8x1,16m8,16x1",
    )
    m = vdvae_zoo.VDVAE(config).eval()
    with (
        torch.no_grad()
    ):  # small values in the zero-initialised last convolutions: the prior depends on the layers above
        for name, p in m.named_parameters():
            if name.endswith("c4.weight") and not p.any():
                p.normal_(0.0, 0.05)
    return m


def test_llr_at_k0_is_zero_and_keeping_every_layer_is_the_elbo(model):
    images = random_images(5)
    seeds = [image_seed(3, i) for i in range(5)]
    elbo = model.likelihood(images, seeds=seeds)
    (everything,) = model.likelihood(images, seeds=seeds, keep=[model.num_layers])
    assert torch.equal(everything.neg_elbo, elbo.neg_elbo) and torch.equal(everything.kl, elbo.kl)
    scores = ood_scores(model, images, ks=(0, 2), seed=3)
    assert np.array_equal(scores["llr_k0"], np.zeros(5)) and np.array_equal(scores["bpd_k0"], scores["bpd"])
    np.testing.assert_allclose(scores["bpd"], elbo.bpd.numpy(), rtol=1e-6)


def test_the_lowest_layers_come_from_the_prior_mean_and_drop_out_of_the_rate(model):
    """keep=n: layers 0..n-1 (the top, lowest resolutions) from the posterior, as reconstruct(keep=n) keeps them;
    layers n.. (the highest resolutions, nearest the pixels) take their conditional prior's mean, KL not counted."""
    images = random_images(3, seed=1)
    seeds = [5, 6, 7]
    n = model.num_layers - 2
    elbo, bound = model.likelihood(images, seeds=seeds, keep=[None, n])
    assert model.layer_resolutions[n:] == [16, 16] and max(model.layer_resolutions[:n]) <= 16
    assert torch.equal(bound.kl[:, :n], elbo.kl[:, :n])  # the same draws for the layers both keep
    assert (bound.kl[:, n:] == 0).all() and (elbo.kl[:, n:] > 0).all()
    assert torch.allclose(bound.rate, bound.kl.sum(1) / (16 * 16 * 3))
    # the same bound by hand: the posterior samples of the first n layers, then the prior's means
    kept = model.encode(images, seeds=seeds)[:n]
    params = _decode_prior_mean(model, kept)
    _, target = model.preprocess(torch.as_tensor(images))
    expected = dmol_nll(params, target, model.config.num_mixtures)
    np.testing.assert_allclose(bound.distortion.numpy(), expected.numpy(), rtol=1e-5)
    # a prior sample instead (temperature 1) is another, noisier bound
    (sampled,) = model.likelihood(images, seeds=seeds, keep=[n], prior_temperature=1.0)
    assert not torch.equal(sampled.distortion, bound.distortion)


def _decode_prior_mean(model, kept):
    n = len(kept)
    return model.decode_with(lambda i, layer: kept[i] if i < n else layer.p_mean, n=kept[0].shape[0])


def test_auroc_is_the_rank_statistic_of_the_per_image_scores(tmp_path, model):
    rng = np.random.default_rng(0)
    in_set = rng.integers(60, 200, (24, 16, 16, 3), dtype=np.uint8)
    flat = np.repeat(rng.integers(0, 256, (10, 1, 1, 3), dtype=np.uint8), 16, axis=1).repeat(16, axis=2)
    noise = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "in.npy", in_set)
    np.save(tmp_path / "flat.npy", flat)
    np.save(tmp_path / "noise.npy", noise)
    report, tables = evaluate_ood(
        model, tmp_path / "in.npy", [tmp_path / "flat.npy", tmp_path / "noise.npy"], ks=(1, 3), progress=False
    )
    assert [s["name"] for s in report.sets] == ["flat", "noise"]
    for s in report.sets:
        for score, metrics in s["metrics"].items():
            a, b = tables["in"].columns[score], tables[s["name"]].columns[score]
            pairs = np.mean([[1.0 if y > x else 0.5 if y == x else 0.0 for x in a] for y in b])
            assert metrics["auroc"] == pytest.approx(pairs)
            fpr, tpr = roc_curve(a, b)
            assert metrics["fpr_at_95_tpr"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)])
    # per image, the engine's numbers: the same as ood_scores on the same images with the same seed rule
    direct = ood_scores(model, in_set, ks=(1, 3))
    np.testing.assert_allclose(tables["in"].columns["llr_k3"], direct["llr_k3"], atol=1e-6)


def test_metrics_on_known_cases():
    assert detection_metrics([0, 1, 2], [3, 4, 5]) == {"auroc": 1.0, "auprc": 1.0, "fpr_at_95_tpr": 0.0}
    reversed_ = detection_metrics([3, 4, 5], [0, 1, 2])
    assert reversed_["auroc"] == 0.0 and reversed_["fpr_at_95_tpr"] == 1.0
    assert detection_metrics([1, 1], [1, 1])["auroc"] == 0.5


def test_the_ood_command_writes_report_csv_and_roc(tmp_path, model):
    folder = model.save_pretrained(tmp_path / "m")
    rng = np.random.default_rng(1)
    np.save(tmp_path / "in.npy", rng.integers(60, 200, (20, 16, 16, 3), dtype=np.uint8))
    (tmp_path / "noise").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "noise" / f"{i}.png")
    args = [
        "ood",
        folder,
        "--in",
        tmp_path / "in.npy",
        "--ood",
        tmp_path / "noise",
        "-k",
        1,
        "-k",
        2,
        "-o",
        tmp_path / "r.json",
        "--csv",
        tmp_path / "s.csv",
        "--roc",
        tmp_path / "roc.png",
        "--chunk",
        8,
    ]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "AUROC" in result.output and "LLR>2" in result.output and "ELBO (bpd)" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["sets"][0]["metrics"]) == {"bpd", "llr_k1", "llr_k2"}
    assert report["options"]["ks"] == [1, 2] and report["options"]["prior_temperature"] == 0.0
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert len(rows) == 1 + 26 and rows[0].startswith("set,index")
    assert Image.open(tmp_path / "roc.png").size == (640, 480)
    again = run(*args)
    assert again.exit_code == 1 and "--overwrite" in again.output
