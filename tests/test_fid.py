"""Sample quality through torch-fidelity (#39), offline: torch-fidelity's own Inception architecture with weights the
test writes (random, seeded, its batch-norm statistics taken from photos so that features are not near 0), passed
through the weights-path option. torch-fidelity must be installed (the [fid] extra; CI installs it): these tests
are never skipped."""

import json
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import vdvae_zoo
from vdvae_zoo.cli import main
from vdvae_zoo.data.images import photo_crops
from vdvae_zoo.scoring import inception as inception_module
from vdvae_zoo.scoring.fid import fid
from vdvae_zoo.scoring.inception import FidError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from fid_sweep import standin_inception  # noqa: E402  (the stand-in network, stated once: benchmarks/fid_sweep.py)


def _folder(path: Path, images: np.ndarray) -> Path:
    path.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(path / f"{i:03d}.png")
    return path


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    photos = np.stack(photo_crops(48, 32, 0))
    standin_inception(root / "inception.pth", photos[:16])  # random weights, batch-norm statistics from photos
    assert CliRunner().invoke(main, ["new", "tiny32", "-o", str(root / "model")]).exit_code == 0
    return {
        "root": root,
        "cache": root / "cache",  # one cache for the module: the reference's features are extracted once
        "weights": str(root / "inception.pth"),
        "model": str(root / "model"),
        "ref": str(_folder(root / "ref", photos[16:36])),
        "other_photos": str(_folder(root / "other", photos[36:48])),
    }


def test_the_numbers_equal_torch_fidelitys_calculate_metrics(places, tmp_path):
    """Two folders, our fid against torch-fidelity's calculate_metrics with the same network: FID, KID and
    precision/recall to float tolerance; and the network is not degenerate: photos are closer to photos than a
    random model's samples are."""
    import torch_fidelity

    model = vdvae_zoo.load(places["model"])
    samples = tmp_path / "samples"
    vdvae_zoo.write_sample_set(model, samples, 12, seed=1, progress=False)
    ours = fid(
        str(samples), places["ref"], kid=True, prc=True, inception_weights=places["weights"], cache_dir=places["cache"]
    )
    theirs = torch_fidelity.calculate_metrics(
        input1=str(samples),
        input2=places["ref"],
        cuda=False,
        fid=True,
        kid=True,
        prc=True,
        feature_extractor="inception-v3-compat",
        feature_layer_prc="2048",
        feature_extractor_weights_path=places["weights"],
        kid_subset_size=12,
        samples_shuffle=False,
        cache=False,
        verbose=False,
        save_cpu_ram=True,
    )
    row = ours.rows[0]
    assert row.fid == pytest.approx(theirs["frechet_inception_distance"], rel=1e-5)
    assert row.kid_mean == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4, abs=1e-9)
    assert row.kid_std == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-4, abs=1e-9)
    assert (row.precision, row.recall) == (pytest.approx(theirs["precision"]), pytest.approx(theirs["recall"]))
    photos = fid(
        _sample_set_of(places["other_photos"], tmp_path / "photos"),
        places["ref"],
        inception_weights=places["weights"],
        cache_dir=places["cache"],
    )
    assert photos.reference.get("cached") is True  # a later run against the same reference extracts nothing
    assert 0 < photos.rows[0].fid < 0.5 * row.fid


def _sample_set_of(images: str, folder: Path) -> str:
    """A folder of photos dressed as a sample set (samples.json), to score real images through the same path."""
    folder.mkdir()
    for p in sorted(Path(images).iterdir()):
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "samples.json").write_text(json.dumps({"image_size": 32, "temperature": None, "seed": 0, "model": {}}))
    return str(folder)


def test_streamed_samples_give_the_sample_folders_numbers(places, tmp_path):
    model = vdvae_zoo.load(places["model"])
    vdvae_zoo.write_sample_set(model, tmp_path / "s", 10, seed=3, temperature=0.9, progress=False)
    common = dict(inception_weights=places["weights"], cache_dir=places["cache"], kid=True, progress=False)
    from_folder = fid(str(tmp_path / "s"), places["ref"], **common)
    streamed = fid(model, places["ref"], num=10, seed=3, temperatures=[0.9], **common)
    assert streamed.rows[0].fid == from_folder.rows[0].fid  # bit for bit
    assert streamed.rows[0].kid_mean == from_folder.rows[0].kid_mean


def test_a_resumed_run_equals_an_uninterrupted_one(places, tmp_path, monkeypatch):
    monkeypatch.setattr(inception_module, "CHUNK", 4)  # small chunks, so that an interruption falls between them
    model = vdvae_zoo.load(places["model"])
    common = dict(num=10, seed=5, batch_size=3, inception_weights=places["weights"], cache_dir=places["cache"])
    whole = fid(model, places["ref"], **common, progress=False)
    state = tmp_path / "run.state.safetensors"
    real_sample, calls = model.sample, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # 6 images drawn, 4 of them extracted: the state keeps one chunk
            raise KeyboardInterrupt
        return real_sample(*args, **kwargs)

    with mock.patch.object(model, "sample", interrupted), pytest.raises(KeyboardInterrupt):
        fid(model, places["ref"], **common, state=state, progress=False)
    from safetensors.torch import load_file

    assert load_file(state)["t0"].shape == (4, 2048)
    resumed = fid(model, places["ref"], **common, state=state, resume=True, progress=False)
    assert resumed.rows[0].fid == whole.rows[0].fid and not state.exists()
    with pytest.raises(FidError, match="another run's features"):
        fid(model, places["ref"], **common, state=_with_state(state), resume=True, progress=False)


def _with_state(state: Path) -> Path:
    from safetensors.torch import save_file

    save_file({"t0": torch.zeros(8, 2048)}, state, metadata={"options": "{}"})
    return state


def test_the_sweep_writes_rows_a_chart_and_the_card(places, tmp_path):
    runner = CliRunner()
    out = tmp_path / "fid.json"
    args = ["fid", places["model"], "--ref", places["ref"], "--num", "6", "-t", "0.5", "-t", "1.0", "--kid", "--prc"]
    args += ["--inception-weights", places["weights"], "--cache-dir", str(places["cache"]), "-o", str(out)]
    result = runner.invoke(main, [*args, "--card", places["model"]])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [r["temperature"] for r in report["rows"]] == [0.5, 1.0] and report["num"] == 6
    assert report["extractor"]["weights_sha256"] and report["model"]["sha256"]
    assert Image.open(out.with_suffix(".png")).format == "PNG"
    assert Image.open(out.with_suffix(".kid.png")).format == "PNG"
    card = (Path(places["model"]) / "README.md").read_text()
    assert "FID" in card and "KID" in card and "precision" in card
    again = runner.invoke(main, args)
    assert again.exit_code != 0 and "exists" in again.output  # an existing -o needs --overwrite
    again = runner.invoke(main, [*args, "--overwrite"])
    assert again.exit_code == 0 and "features from the cache" in again.output


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--num", "1"], "--num"),
        (["--ref", "{small}"], "usable image(s) of 32x32"),
        (["--ref", "{empty}"], "holds no data set"),
        (["--inception-weights", "{text}"], "not a state dict of tensors"),
    ],
)
def test_bad_input_is_one_sentence_and_writes_nothing(places, tmp_path, extra, message):
    _folder(tmp_path / "small", np.zeros((3, 16, 16, 3), np.uint8))
    (tmp_path / "empty").mkdir()
    (tmp_path / "text").write_text("not weights")
    names = {"small": tmp_path / "small", "empty": tmp_path / "empty", "text": tmp_path / "text"}
    extra = [str(names[w[1:-1]]) if w.startswith("{") else w for w in extra]
    args = ["fid", places["model"], "--ref", places["ref"], "--num", "4", "--inception-weights", places["weights"]]
    args += ["--cache-dir", str(places["cache"]), "-o", str(tmp_path / "o.json"), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (1, 2) and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.json").exists()


def test_a_missing_extra_and_an_offline_download_are_one_sentence(places, tmp_path, monkeypatch):
    with mock.patch.dict(sys.modules, {"torch_fidelity": None}):
        result = CliRunner().invoke(main, ["fid", places["model"], "--ref", places["ref"], "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and 'pip install "vdvae-zoo[fid]"' in result.output
    assert not (tmp_path / "o").exists()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    result = CliRunner().invoke(main, ["fid", places["model"], "--ref", places["ref"], "--num", "2"])
    assert result.exit_code == 1 and "could not be downloaded" in result.output
    assert "weights-inception-2015-12-05-6726825d.pth" in result.output and str(tmp_path / "hub") in result.output


def test_the_reference_cache_is_shown_and_removed_by_the_cache_command(places, tmp_path, monkeypatch):
    """Reference features go beside the converted weights by default, where `vdvae-zoo cache` lists them and
    `cache rm fid-references` removes them."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    from vdvae_zoo.scoring.inception import reference_cache_dir

    report = fid(
        str(_sample_set_of(places["other_photos"], tmp_path / "s")), places["ref"], inception_weights=places["weights"]
    )
    assert Path(report.reference["statistics"]).parent == reference_cache_dir()
    assert str(tmp_path) in str(reference_cache_dir())
    listing = CliRunner().invoke(main, ["cache"])
    assert listing.exit_code == 0 and "fid-references" in listing.output, listing.output
    removed = CliRunner().invoke(main, ["cache", "rm", "fid-references"])
    assert removed.exit_code == 0 and not reference_cache_dir().exists()


def test_card_is_checked_before_any_work_as_eval_checks_it(places, tmp_path):
    """fid --card and eval --card share one check: a folder that is not a model folder is refused, nothing written."""
    (tmp_path / "plain").mkdir()
    args = ["fid", places["model"], "--ref", places["ref"], "--num", "2", "--inception-weights", places["weights"]]
    result = CliRunner().invoke(main, [*args, "--card", str(tmp_path / "plain"), "-o", str(tmp_path / "o.json")])
    assert result.exit_code == 2 and "is not a model folder" in result.output and "README.md" in result.output
    assert not (tmp_path / "o.json").exists()
