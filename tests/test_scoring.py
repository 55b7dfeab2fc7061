"""The one scoring engine (scoring.py): a score is a function of (image, model, seed, options) only."""

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import vdvae_zoo
from vdvae_zoo.cli import main
from vdvae_zoo.compute.batching import image_seed
from vdvae_zoo.data.datasets import files_dataset
from vdvae_zoo.scoring.engine import ScoreOptions, StateError, score_dataset, score_images


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def noisy_model(tmp_path_factory):
    """A random-init 32x32 model of another width and zdim than any other test's (width 24, zdim 5): its
    single-draw ELBO moves by more than 1 bit per dim from draw to draw, so any leak of the batch into the draws
    shows."""
    torch.manual_seed(5)
    config = vdvae_zoo.VDVAEConfig(
        image_size=32,
        width=24,
        zdim=5,
        num_mixtures=3,
        enc_blocks="32x1,32d2,16x1,16d2,8x1,8d4,2x1,2d2,1x1",
        dec_blocks="1x1,2m1,8m2,8x1,16m8,16x1,32m16,32x1",
    )
    model = vdvae_zoo.VDVAE(config).eval()
    with torch.no_grad():  # the zero-initialised last convolutions get small values, and the latents weigh more
        for name, p in model.named_parameters():
            if name.endswith("c4.weight") and not p.any():
                p.normal_(0.0, 0.05)
            if name.endswith("z_proj.weight"):
                p.mul_(6.0)
    folder = tmp_path_factory.mktemp("noisy") / "model"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folder23(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs") / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(23):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def _column(path, name="bpd"):
    return [float(r[name]) for r in csv.DictReader(open(path))]


def test_the_noisy_model_really_is_noisy(noisy_model, folder23):
    """The premise of the next test: one image's single-draw ELBO varies by more than 1 bit per dim."""
    model = vdvae_zoo.load(noisy_model, device="cpu")
    image = files_dataset([folder23]).read([0])
    draws = model.likelihood(np.repeat(image, 32, axis=0), seeds=list(range(32))).bpd
    assert float(draws.max() - draws.min()) > 1.0


def test_bpd_is_the_same_for_every_batch_size_and_equals_eval(tmp_path, noisy_model, folder23):
    scores = {}
    for b in (1, 4, 16):
        out = tmp_path / f"b{b}.csv"
        result = run("bpd", folder23, "--model", noisy_model, "--batch-size", b, "--seed", 3, "-o", out)
        assert result.exit_code == 0, result.output
        scores[b] = _column(out)
    np.testing.assert_allclose(scores[4], scores[1], atol=1e-4)
    np.testing.assert_allclose(scores[16], scores[1], atol=1e-4)
    # eval on the same folder with the same seed: the same per-image numbers, and so the same mean
    result = run(
        "eval",
        noisy_model,
        "--data",
        folder23,
        "--seed",
        3,
        "--batch-size",
        4,
        "--chunk",
        5,
        "-o",
        tmp_path / "ev.json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ev.json").read_text())
    np.testing.assert_allclose(report["per_image"]["bpd"], scores[4], atol=1e-6)
    assert report["mean_bpd"] == pytest.approx(np.mean(scores[4]), abs=1e-6)


def test_a_pass_of_fixed_shape_makes_each_score_independent_of_its_companions(noisy_model, folder23):
    """With seeds, every pass has batch_size rows (the last one padded): an image's numbers are bit for bit the
    same whichever images come with it, and however many."""
    model = vdvae_zoo.load(noisy_model, device="cpu")
    images = torch.from_numpy(files_dataset([folder23]).read(list(range(7))))
    seeds = [image_seed(0, i) for i in range(7)]
    together = model.likelihood(images, seeds=seeds, batch_size=4)
    for i in range(7):
        alone = model.likelihood(images[i : i + 1], seeds=seeds[i : i + 1], batch_size=4)
        assert torch.equal(alone.neg_elbo, together.neg_elbo[i : i + 1]) and torch.equal(
            alone.kl, together.kl[i : i + 1]
        )
    reordered = model.likelihood(images.flip(0), seeds=seeds[::-1], batch_size=4)
    assert torch.equal(reordered.neg_elbo.flip(0), together.neg_elbo)
    # the same holds for samples and for the posterior statistics
    a = model.sample(5, seeds=list(range(5)), batch_size=3)
    assert torch.equal(model.sample(1, seeds=[3], batch_size=3)[0], a[3])
    stats = model.encode(images[:3], stats=True, seeds=seeds[:3], batch_size=2)
    assert torch.equal(model.encode(images[2:3], stats=True, seeds=seeds[2:3], batch_size=2)[4].std, stats[4].std[2:3])


def test_chunking_and_resuming_change_no_number(tmp_path, noisy_model, folder23):
    model = vdvae_zoo.load(noisy_model, device="cpu")
    data = files_dataset([folder23])
    options = ScoreOptions(seed=1)
    whole = score_dataset(model, data, options, chunk=23, progress=False)
    small = score_dataset(model, data, options, chunk=3, progress=False)
    assert np.array_equal(whole.columns["bpd"], small.columns["bpd"])
    assert np.allclose(whole.kl_sum_nats, small.kl_sum_nats, rtol=1e-9)
    # interrupted after two chunks, then resumed: the same numbers, and only the rest is scored
    calls = {"n": 0}
    state = tmp_path / "s.jsonl"

    def stop_at_third(record):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_dataset(model, data, options, chunk=5, state=state, on_chunk=stop_at_third, progress=False)
    assert len(state.read_text().splitlines()) == 1 + 2
    with pytest.raises(FileExistsError, match="--resume continues it"):
        score_dataset(model, data, options, chunk=5, state=state, progress=False)
    resumed = score_dataset(model, data, options, chunk=5, state=state, resume=True, progress=False)
    assert np.array_equal(resumed.columns["bpd"], whole.columns["bpd"]) and resumed.scored_here == 13
    assert not state.exists()


def test_damaged_state_files_say_which_line(tmp_path, noisy_model, folder23):
    model = vdvae_zoo.load(noisy_model, device="cpu")
    data = files_dataset([folder23])
    state = tmp_path / "s.jsonl"

    def stop_after_first(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_dataset(model, data, chunk=5, state=state, on_chunk=stop_after_first, progress=False)
    header, first = state.read_text().splitlines()
    # a torn last line (the process died while appending) is dropped, and that chunk is scored again
    state.write_text(f"{header}\n{first}\n{first[:40]}")
    assert len(score_dataset(model, data, chunk=5, state=state, resume=True, progress=False)) == 23
    record = json.loads(first)
    bad_records = {
        "chunk 10^6": dict(record, chunk=10**6),
        "a list": [1, 2, 3],
        "too few numbers": dict(record, bpd=record["bpd"][:2]),
        "other images": dict(record, index=[7, 8, 9, 10, 11]),
    }
    for _why, bad in bad_records.items():
        state.write_text(f"{header}\n{json.dumps(bad)}\n")
        with pytest.raises(StateError, match=r"s\.jsonl, line 2: .*--overwrite"):
            score_dataset(model, data, chunk=5, state=state, resume=True, progress=False)
    state.write_text(f"{header}\nnot json\n{first}\n")
    with pytest.raises(StateError, match="line 2: not a JSON line"):
        score_dataset(model, data, chunk=5, state=state, resume=True, progress=False)


def test_unreadable_files_are_skipped_alike_by_bpd_and_eval(tmp_path, noisy_model, folder23):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("000.png", "001.png", "002.png"):
        (folder / name).write_bytes((folder23 / name).read_bytes())
    (folder / "001b.png").write_bytes(b"not an image")
    model = vdvae_zoo.load(noisy_model, device="cpu")
    report = vdvae_zoo.evaluate(model, folder, progress=False)
    assert report.images == 3 and report.skipped[0][0] == 2 and report.per_image["index"] == [0, 1, 3]
    result = run("bpd", folder, "--model", noisy_model, "-o", tmp_path / "s.csv")
    assert result.exit_code == 0 and "skipped" in result.output
    np.testing.assert_allclose(_column(tmp_path / "s.csv"), report.per_image["bpd"], atol=1e-6)


def test_score_images_columns_and_units(noisy_model, folder23):
    model = vdvae_zoo.load(noisy_model, device="cpu")
    images = files_dataset([folder23]).read([0, 1, 2])
    values, kl = score_images(model, images, [0, 1, 2], ScoreOptions(seed=4, ks=(1, 3)))
    assert list(values) == ["bpd", "distortion_bpd", "rate_bpd", "bpd_k1", "llr_k1", "bpd_k3", "llr_k3"]
    np.testing.assert_allclose(values["distortion_bpd"] + values["rate_bpd"], values["bpd"], rtol=1e-6)
    np.testing.assert_allclose(kl.sum(1) / (32 * 32 * 3 * np.log(2)), values["rate_bpd"], rtol=1e-5)
    np.testing.assert_allclose(values["llr_k3"], values["bpd_k3"] - values["bpd"], atol=1e-6)
    with pytest.raises(ValueError, match="each k must be an integer in 0..8"):
        ScoreOptions(ks=(9,)).check(model.num_layers)
    with pytest.raises(ValueError, match="samples=1 with ks"):
        ScoreOptions(ks=(1,), samples=2).check(model.num_layers)
