"""Ready to publish: one version everywhere, a CITATION.cff that holds what the CFF schema requires, and (slow) an
sdist and a wheel that `twine check` passes, the wheel working on its own: installed with `pip install --no-deps
--target` and run with nothing of the repository on the path."""

import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import vdvae_zoo

REPO = Path(__file__).resolve().parents[1]


def test_one_version_in_the_package_the_changelog_and_the_citation():
    import yaml

    changelog = (REPO / "CHANGELOG.md").read_text()
    first = re.search(r"^## (\S+)", changelog, re.M).group(1)
    assert first == vdvae_zoo.__version__
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["version"] == vdvae_zoo.__version__


def test_the_citation_holds_what_cff_1_2_requires():
    import yaml

    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):
        assert citation.get(key), key
    assert all(a.get("name") or a.get("family-names") for a in citation["authors"])
    paper = citation["preferred-citation"]
    assert paper["type"] in ("conference-paper", "article") and "Very Deep VAEs" in paper["title"]
    assert paper["authors"][0]["family-names"] == "Child" and paper["year"] == 2021


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return next(out.glob("*.whl")), next(out.glob("*.tar.gz"))


@pytest.mark.slow  # builds the sdist and the wheel (about 30 s)
def test_twine_passes_and_the_sdist_carries_the_licence_the_manifest_and_the_tests(artifacts):
    pytest.importorskip("twine")
    wheel, sdist = artifacts
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", str(wheel), str(sdist)], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0 and check.stdout.count("PASSED") == 2, check.stdout + check.stderr
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in (
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "CITATION.cff",
        "weights_manifest.json",
        "tests/golden/tiny32/model-ema.th",
        "tests/golden/tiny32/expected.json",
        "tests/conftest.py",
        "tests/helpers.py",
        "tests/golden/dmol/params.npy",
    ):
        assert needed in names, needed
    with zipfile.ZipFile(wheel) as whl:
        files = whl.namelist()
        assert "vdvae_zoo/weights_manifest.json" in files
        entry_points = whl.read(next(f for f in files if f.endswith("entry_points.txt"))).decode()
    assert "vdvae-zoo = vdvae_zoo.cli:main" in entry_points


@pytest.mark.slow  # installs the wheel into a folder and runs commands from it
def test_the_wheel_works_on_its_own(artifacts, tmp_path):
    wheel, _ = artifacts
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    # -S: no site-packages processing (no .pth, so no editable install of the clone); the dependencies' folders
    # are given after the wheel's, and the working folder is not the clone.
    deps = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site)] + deps), HF_HUB_OFFLINE="1")
    work = tmp_path / "work"
    work.mkdir()

    def run(*args, code=None):
        argv = [sys.executable, "-S"] + (["-c", code] if code else ["-m", "vdvae_zoo", *args])
        result = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return result.stdout

    where = run(code="import vdvae_zoo, json; print(json.dumps([vdvae_zoo.__file__, vdvae_zoo.__version__]))")
    path, version = json.loads(where.strip().splitlines()[-1])
    assert Path(path).resolve().is_relative_to(site.resolve()) and version == vdvae_zoo.__version__
    assert "cifar10" in run("list") and "ffhq256" in run("list")  # the manifest inside the wheel
    run("new", "tiny32", "-o", "m")
    run("sample", "m", "-n", "2", "-o", "s.png")
    assert (work / "s.png").stat().st_size > 0
    readme = (REPO / "README.md").read_text()
    quick_start = re.search(r"## Quick start\n\n```python\n(.*?)```", readme, re.S).group(1)
    run(code=quick_start)
    assert (work / "bits_per_layer.png").is_file()


# ------------------------------------------------------------------------------------- cards with measured numbers
def test_eval_writes_its_result_into_a_card_the_hub_parser_reads(tmp_path):
    from click.testing import CliRunner
    from helpers import image_folder
    from huggingface_hub import ModelCard, metadata_load

    from vdvae_zoo.cli import main

    runner = CliRunner()
    assert runner.invoke(main, ["new", "tiny32", "-o", str(tmp_path / "m")]).exit_code == 0
    folder = image_folder(tmp_path / "imgs", 4, size=32, seed=1)
    result = runner.invoke(
        main,
        [
            "eval",
            str(tmp_path / "m"),
            "--data",
            str(folder),
            "--seed",
            "3",
            "--card",
            str(tmp_path / "m"),
            "-o",
            str(tmp_path / "r.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    measured = json.loads((tmp_path / "r.json").read_text())["mean_bpd"]
    card = ModelCard.load(tmp_path / "m" / "README.md")
    results = card.data.eval_results
    assert len(results) == 1 and results[0].metric_value == pytest.approx(measured)
    assert results[0].metric_type == "bpd" and results[0].metric_args["seed"] == 3
    assert "measured with vdvae-zoo" in results[0].source_name and "--seed 3" in results[0].source_name
    assert metadata_load(tmp_path / "m" / "README.md")["library_name"] == "vdvae-zoo"
    # re-saving the model keeps the measured result; a second eval with other options adds one
    vdvae_zoo.load(tmp_path / "m", device="cpu").save_pretrained(tmp_path / "m")
    assert len(ModelCard.load(tmp_path / "m" / "README.md").data.eval_results) == 1
    again = runner.invoke(
        main,
        [
            "eval",
            str(tmp_path / "m"),
            "--data",
            str(folder),
            "--seed",
            "4",
            "--card",
            str(tmp_path / "m"),
            "-o",
            str(tmp_path / "r2.json"),
            "--overwrite",
        ],
    )
    assert again.exit_code == 0, again.output
    assert len(ModelCard.load(tmp_path / "m" / "README.md").data.eval_results) == 2


def test_released_cards_quote_the_paper_and_say_so(tmp_path):
    from huggingface_hub import ModelCard

    from vdvae_zoo import VDVAEConfig
    from vdvae_zoo.weights.cards import PAPER_SOURCE, measured_result, model_card
    from vdvae_zoo.weights.manifest import load_manifest

    entry = load_manifest().get("cifar10")
    mine = measured_result("cifar10 (python)", "test", 2.9, args={"seed": 0}, command="vdvae-zoo eval cifar10 ...")
    (tmp_path / "README.md").write_text(model_card(VDVAEConfig.from_preset("cifar10"), ["x"], entry, results=[mine]))
    results = ModelCard.load(tmp_path / "README.md").data.eval_results
    paper, measured = results
    assert paper.metric_value == entry.reported_test_bpd and paper.source_name == PAPER_SOURCE["name"]
    assert "quoted (not measured" in paper.source_name and paper.source_url == PAPER_SOURCE["url"]
    assert measured.metric_value == 2.9 and "measured with vdvae-zoo" in measured.source_name


def test_publish_carries_the_measured_results(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from helpers import TINY, entry, golden_config, write_manifest

    from vdvae_zoo.cli import main
    from vdvae_zoo.model import VDVAE
    from vdvae_zoo.weights.cards import measured_result, model_card

    folder = tmp_path / "measured"
    folder.mkdir()
    (folder / "README.md").write_text(
        model_card(vdvae_zoo.VDVAEConfig.from_preset("cifar10"), [], results=[measured_result("x", "test", 1.5)])
    )
    manifest = tmp_path / "manifest.json"
    write_manifest(manifest, [entry("tiny32", golden_config(), url="https://example.org/tiny32.th")])
    sent = {}
    monkeypatch.setattr(
        VDVAE,
        "push_to_hub",
        lambda self, repo, **kw: sent.update(kw) or {"repo_id": repo, "revision": "0" * 40, "sha256": "0" * 64},
    )
    result = CliRunner().invoke(
        main,
        [
            "publish",
            f"tiny32={TINY / 'model-ema.th'}",
            "--org",
            "me",
            "--manifest",
            str(manifest),
            "--results-from",
            str(folder),
        ],
    )
    assert result.exit_code == 0, result.output
    assert [r["metrics"][0]["value"] for r in sent["results"]] == [1.5]
