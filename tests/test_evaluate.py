"""Issue #15: `vdvae-zoo eval` / `vdvae_zoo.scoring.evaluate` and dataset-scale sample sets."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import interrupt_call

import vdvae_zoo
from vdvae_zoo.cli import main
from vdvae_zoo.compute.batching import image_seed


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture()
def data(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (23, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "imgs.npy", x)
    return tmp_path / "imgs.npy", x


@pytest.fixture()
def tiny(tmp_path):
    assert run("new", "tiny32", "-o", tmp_path / "tiny").exit_code == 0
    return tmp_path / "tiny"


def test_each_image_is_scored_once_with_its_own_seed(data, tiny):
    path, x = data
    model = vdvae_zoo.load(tiny, device="cpu")
    report = vdvae_zoo.evaluate(model, path, chunk=5, batch_size=3, seed=7, progress=False)
    direct = model.likelihood(x, seeds=[image_seed(7, i) for i in range(23)])
    assert report.per_image["index"] == list(range(23)) and report.images == 23
    np.testing.assert_allclose(report.per_image["bpd"], direct.bpd.numpy(), rtol=1e-6)
    assert report.mean_bpd == pytest.approx(float(direct.bpd.double().mean()), rel=1e-6)
    se = float(direct.bpd.double().std() / np.sqrt(23))
    assert report.stderr_bpd == pytest.approx(se, rel=1e-4) and report.ci95_bpd[1] - report.ci95_bpd[
        0
    ] == pytest.approx(2 * 1.96 * report.stderr_bpd)
    bits = direct.kl.double().mean(0) / np.log(2)
    assert sum(report.bits_per_resolution.values()) == pytest.approx(float(bits.sum()), rel=1e-5)
    assert report.mean_distortion_bpd + report.mean_rate_bpd == pytest.approx(report.mean_bpd, rel=1e-6)


def test_limit_takes_a_seeded_subset_and_k_samples_add_the_tighter_bound(data, tiny):
    path, _ = data
    model = vdvae_zoo.load(tiny, device="cpu")
    a = vdvae_zoo.evaluate(model, path, limit=6, samples=3, seed=2, progress=False)
    b = vdvae_zoo.evaluate(model, path, limit=6, samples=3, seed=2, chunk=2, progress=False)
    assert a.per_image["index"] == b.per_image["index"] and len(a.per_image["index"]) == 6 and a.limit == 6
    assert a.per_image["bpd_iw"] == pytest.approx(b.per_image["bpd_iw"], rel=1e-6)
    assert a.mean_bpd_iw is not None and a.samples == 3


def test_an_interrupted_evaluation_resumes_to_the_same_numbers(tmp_path, data, tiny, monkeypatch):
    path, _ = data
    out = tmp_path / "r.json"
    whole = run("eval", tiny, "--data", path, "--chunk", 4, "-o", tmp_path / "whole.json")
    assert whole.exit_code == 0, whole.output
    original = vdvae_zoo.VDVAE.likelihood
    interrupt_call(monkeypatch, vdvae_zoo.VDVAE, "likelihood", at=3)
    assert run("eval", tiny, "--data", path, "--chunk", 4, "-o", out).exit_code != 0
    state = tmp_path / "r.json.state.jsonl"
    assert len(state.read_text().splitlines()) == 1 + 2  # the header, two finished chunks
    monkeypatch.setattr(vdvae_zoo.VDVAE, "likelihood", original)
    resumed = run("eval", tiny, "--data", path, "--chunk", 4, "-o", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    a, b = json.loads((tmp_path / "whole.json").read_text()), json.loads(out.read_text())
    assert a["per_image"] == b["per_image"] and not state.exists()
    # a state written for other options is refused, naming them
    state.write_text(
        json.dumps(
            {
                "model": "x",
                "data": {},
                "split": "all",
                "limit": None,
                "samples": 1,
                "seed": 0,
                "chunk": 4,
                "dtype": "float32",
            }
        )
        + "\n"
    )
    refused = run("eval", tiny, "--data", path, "--chunk", 4, "-o", out, "--overwrite", "--resume")
    assert "holds the progress of another run" in refused.output and "--overwrite" in refused.output
    assert "differing: model, data, positions, options" in refused.output


def test_the_report_names_the_paper_number_and_the_model(tmp_path, data, tiny, monkeypatch):
    path, _ = data
    model = vdvae_zoo.load(tiny, device="cpu")
    report = vdvae_zoo.evaluate(
        model, path, paper_bpd=2.87, model_info={"name": "tiny", "sha256": "ab" * 32}, progress=False
    )
    assert report.paper_bpd == 2.87 and report.paper_difference_in_stderr == pytest.approx(
        (report.mean_bpd - 2.87) / report.stderr_bpd
    )
    text = "\n".join(report.lines())
    assert "paper: 2.87 bpd" in text and "standard errors" in text and "tiny sha256 abababab" in text
    assert json.loads(report.to_json())["model"]["name"] == "tiny"


def test_images_of_another_size_are_refused(tmp_path, tiny):
    np.save(tmp_path / "x.npy", np.zeros((2, 16, 16, 3), np.uint8))
    result = run("eval", tiny, "--data", tmp_path / "x.npy")
    assert result.exit_code == 1 and "has 16x16 images; this model takes 32x32" in result.output


@pytest.mark.slow  # torchrun with two processes
def test_two_processes_give_the_per_image_numbers_of_one(tmp_path, data, tiny):
    path, _ = data
    one = run("eval", tiny, "--data", path, "--chunk", 4, "-o", tmp_path / "one.json")
    assert one.exit_code == 0, one.output
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "vdvae_zoo",
            "eval",
            str(tiny),
            "--data",
            str(path),
            "--chunk",
            "4",
            "-o",
            str(tmp_path / "two.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert a["per_image"]["index"] == b["per_image"]["index"] == list(range(23))  # no duplicates, no dropped tail
    np.testing.assert_allclose(a["per_image"]["bpd"], b["per_image"]["bpd"], rtol=1e-6)
    assert p.stdout.count("bpd: ") == 1  # one process reports


# ----------------------------------------------------------------------------------------------- sample sets
def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_a_sample_set_is_the_same_whatever_the_batch_size_or_an_interruption(tmp_path, tiny):
    args = ("sample", tiny, "--num", 7, "-t", 0.9, "--seed", 4)
    assert run(*args, "--outdir", tmp_path / "b3", "--batch-size", 3).exit_code == 0
    assert run(*args, "--outdir", tmp_path / "b5", "--batch-size", 5).exit_code == 0
    assert _files(tmp_path / "b3") == _files(tmp_path / "b5") and len(_files(tmp_path / "b3")) == 7
    # interrupted after 4 images (as a Ctrl-C would leave it: whole files only), then resumed
    assert run("sample", tiny, "--num", 4, "-t", 0.9, "--seed", 4, "--outdir", tmp_path / "r").exit_code == 0
    refused = run(*args, "--outdir", tmp_path / "r")
    assert refused.exit_code == 1 and "--resume continues" in refused.output
    resumed = run(*args, "--outdir", tmp_path / "r", "--resume", "--batch-size", 2)
    assert resumed.exit_code == 0 and "wrote 3 PNGs" in resumed.output and "4 were there already" in resumed.output
    assert _files(tmp_path / "r") == _files(tmp_path / "b3")
    meta = json.loads((tmp_path / "r" / "samples.json").read_text())
    assert meta["seed"] == 4 and meta["temperature"] == 0.9 and len(meta["model"]["sha256"]) == 64
    other = run("sample", tiny, "--num", 7, "-t", 0.5, "--seed", 4, "--outdir", tmp_path / "r", "--resume")
    assert other.exit_code == 1 and "differing: temperature" in other.output
