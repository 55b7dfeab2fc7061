"""Issue #17: lossless compression with bits-back coding: exact round trips, a rate that keeps the ELBO's promise,
and archives that fail loudly rather than decode wrongly."""

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import vdvae_zoo
from vdvae_zoo import VDVAE, VDVAEConfig
from vdvae_zoo.cli import main
from vdvae_zoo.compress import ArchiveError, _pack, compress, decompress, read_header
from vdvae_zoo.images import photo_crops
from vdvae_zoo.train import Trainer, TrainOptions

from helpers import tiny_config_dict

pytest.importorskip("constriction")


def crops(n, size=16, seed=0):
    """Real photo crops (96 pixels, from the first 8 sample photos), downscaled to size x size."""
    return photo_crops(n, size, seed, side=96, photos=8)


@pytest.fixture()
def tiny():
    torch.manual_seed(5)
    return VDVAE(VDVAEConfig.from_dict(tiny_config_dict())).eval()


def edges(size=16):
    black_white = np.zeros((size, size, 3), np.uint8)
    black_white[::2] = 255
    noise = np.random.default_rng(3).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return [black_white, noise]


@pytest.mark.parametrize("n", [1, 3, 20])
def test_round_trips_are_bit_exact(tiny, n):
    images = (crops(n - 2) + edges())[:n] if n > 2 else crops(n)
    archive, report = compress(tiny, images, [f"im{i}.png" for i in range(n)])
    restored, names = decompress(tiny, archive)
    assert names == [f"im{i}.png" for i in range(n)]
    assert all(np.array_equal(a, b) for a, b in zip(restored, images))
    assert report.images == n and report.webp_images + len(report.net_bits_per_dim) == n
    if n == 1:
        assert report.webp_images == 1  # a single image is all initial bits: lossless WebP


def test_the_net_rate_keeps_the_elbo_promise_on_a_trained_model(tmp_path):
    # A tiny model trained by our trainer on photo crops; held-out crops are compressed.
    folder = tmp_path / "train"
    folder.mkdir()
    for i, im in enumerate(crops(64, seed=1)):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    config = tmp_path / "c.json"
    config.write_text(json.dumps(tiny_config_dict()))
    trainer = Trainer(TrainOptions(data=str(folder), out=str(tmp_path / "run"), config=str(config), steps=150,
                                   batch_size=8, val_fraction=0.0, val_every=0, save_every=0, sample_every=0,
                                   device="cpu"))
    trainer.train()
    model = vdvae_zoo.load(tmp_path / "run", device="cpu")
    held_out = crops(40, seed=99)
    archive, report = compress(model, held_out)
    assert all(np.array_equal(a, b) for a, b in zip(decompress(model, archive)[0], held_out))
    coded = np.stack(held_out[report.webp_images:])
    torch.manual_seed(0)
    elbo = model.likelihood(coded, n_samples=1).bpd.double().mean().item()
    net = float(np.mean(report.net_bits_per_dim))
    assert len(report.net_bits_per_dim) >= 30
    assert abs(net - elbo) / elbo < 0.02, (net, elbo)


def test_a_damaged_or_truncated_archive_is_refused(tiny):
    archive, _ = compress(tiny, crops(3))
    damaged = bytearray(archive)
    damaged[len(archive) // 2] ^= 0x40
    with pytest.raises(ArchiveError, match="damaged or truncated"):
        decompress(tiny, bytes(damaged))
    with pytest.raises(ArchiveError, match="damaged or truncated"):
        decompress(tiny, archive[:-7])
    with pytest.raises(ArchiveError, match="not a vdvae-zoo archive"):
        decompress(tiny, b"PNG" + archive)


def test_a_machine_or_model_that_computes_differently_is_refused(tiny):
    archive, _ = compress(tiny, crops(3))
    other = VDVAE(tiny.config).eval()
    other.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        other.decoder.out_net.out_conv.bias[0] += 1e-6   # a tiny numerical difference
    with pytest.raises(ArchiveError, match="computes the model's probabilities differently"):
        decompress(other, archive)


def test_the_missing_coder_names_the_extra(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "constriction", None)
    with pytest.raises(ImportError, match=r'pip install "vdvae-zoo\[compress\]"'):
        compress(tiny, crops(1))


def test_the_cli_round_trip_reports_sizes_and_refuses_hostile_names(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["new", "tiny32", "-o", str(tmp_path / "m")]).exit_code == 0
    (tmp_path / "imgs").mkdir()
    images = crops(5, size=32)
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / "imgs" / f"p{i}.png")
    out = runner.invoke(main, ["compress", str(tmp_path / "m"), str(tmp_path / "imgs"), "-o", str(tmp_path / "a.vdz")])
    assert out.exit_code == 0, out.output
    assert "the first 5 stored as lossless WebP" in out.output and "as PNG" in out.output  # all initial bits
    back = runner.invoke(main, ["decompress", str(tmp_path / "a.vdz"), "-o", str(tmp_path / "out"),
                                "--model", str(tmp_path / "m")])
    assert back.exit_code == 0, back.output
    for i, im in enumerate(images):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / f"p{i}.png")), im)
    header, payload = read_header((tmp_path / "a.vdz").read_bytes())
    header["names"][0] = "../../evil.png"
    crcs = np.array(header.pop("crc32"), dtype="<u4").tobytes()
    (tmp_path / "evil.vdz").write_bytes(_pack(header, crcs + payload))
    evil = runner.invoke(main, ["decompress", str(tmp_path / "evil.vdz"), "-o", str(tmp_path / "out2"),
                                "--model", str(tmp_path / "m")])
    assert evil.exit_code == 1 and "not plain names" in evil.output and not (tmp_path / "evil.png").exists()


def test_a_five_bit_model_is_refused(tiny):
    five_bit = VDVAE(VDVAEConfig.from_dict(tiny_config_dict(low_bit=True))).eval()
    with pytest.raises(ValueError, match="5-bit"):
        compress(five_bit, crops(2))


def test_the_cli_reports_each_bits_back_image_next_to_its_elbo(tmp_path, tiny):
    folder = tiny.save_pretrained(tmp_path / "m16")
    (tmp_path / "imgs").mkdir()
    for i, im in enumerate(crops(14)):
        Image.fromarray(im).save(tmp_path / "imgs" / f"c{i:02d}.png")
    out = CliRunner().invoke(main, ["compress", str(folder), str(tmp_path / "imgs"), "-o", str(tmp_path / "a.vdz")])
    assert out.exit_code == 0, out.output
    webp = int(out.output.split("the first ")[1].split()[0])
    lines = [line for line in out.output.splitlines() if "(the model's ELBO: " in line]
    assert 0 < webp < 14 and len(lines) == 14 - webp and lines[0].strip().startswith(f"c{webp:02d}.png: ")
