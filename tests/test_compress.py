"""Lossless compression with bits-back coding (#17, #21): exact round trips on every model, clean bits (the chained
rate keeps the ELBO's promise on the golden model and another width; a trained one: test_compress_grid.py), never
a crash, and archives that fail loudly (naming the image and the field) rather than decode wrongly."""

import importlib
import sys
import zlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import TINY, tiny_config_dict
from PIL import Image

import vdvae_zoo
from vdvae_zoo import VDVAE, VDVAEConfig
from vdvae_zoo.cli import main
from vdvae_zoo.data.images import photo_crops

pytest.importorskip("constriction")
C = importlib.import_module("vdvae_zoo.coding.archive")  # the module (vdvae_zoo.coding.archive is also the function)
B = importlib.import_module("vdvae_zoo.coding.bitsback")  # the coder's mechanics
S = importlib.import_module("vdvae_zoo.coding.stack")  # its whitened stack
H = importlib.import_module("vdvae_zoo.coding.header")  # the container
ArchiveError, compress, decompress, read_header, _pack = (
    C.ArchiveError,
    C.compress,
    C.decompress,
    H.read_header,
    H.pack,
)


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


def elbo_of_8_draws(model, images):
    """The ELBO in bits per dim, mean over 8 posterior draws and over the images."""
    x = np.stack(images)
    return float(
        np.mean([model.likelihood(x, seeds=[1000 * d + i for i in range(len(x))]).bpd.numpy() for d in range(8)])
    )


def chained_rate(model, images):
    """Round trip, then the bits-back images' mean net cost (bits per dim) and the 8-draw ELBO on them."""
    archive, report = compress(model, images)
    restored, _ = decompress(model, archive)
    assert all(np.array_equal(a, b) for a, b in zip(restored, images, strict=False))
    coded = [j for j, r in enumerate(report.records) if r.mode == "bits-back"]
    dims = images[0].size
    return (
        np.mean([report.records[j].net for j in coded]) / dims,
        elbo_of_8_draws(model, [images[j] for j in coded]),
        report,
    )


@pytest.fixture(scope="module")
def golden_noisy():
    """The issue's case: the golden tiny32 model (random weights, 16,324 latents per image), its images plus
    uniform noise in [-12, 12]; today's chaining crashed on these at image 34 and cost 3.6x the ELBO before it."""
    import json as _json

    expected = _json.loads((TINY / "expected.json").read_text())
    model = vdvae_zoo.load(TINY / "model-ema.th", config=expected["config"] | expected["preprocess"], device="cpu")
    golden = np.load(TINY / "images.npy")
    rng = np.random.default_rng(5)
    images = [
        np.clip(golden[i % len(golden)].astype(int) + rng.integers(-12, 13, golden[0].shape), 0, 255).astype(np.uint8)
        for i in range(60)
    ]
    return model, images


@pytest.mark.parametrize("n", [1, 3, 20])
def test_round_trips_are_bit_exact(tiny, n):
    images = (crops(n - 2) + edges())[:n] if n > 2 else crops(n)
    archive, report = compress(tiny, images, [f"im{i}.png" for i in range(n)])
    restored, names = decompress(tiny, archive)
    assert names == [f"im{i}.png" for i in range(n)]
    assert all(np.array_equal(a, b) for a, b in zip(restored, images, strict=False))
    assert report.images == n and report.webp_images + len(report.net_bits_per_dim) == n
    if n == 1:
        assert report.webp_images == 1  # a single image is all initial bits: lossless WebP


@pytest.mark.slow  # several seconds (processes, training, long chains): the quick run skips it
def test_the_golden_chain_keeps_the_elbo_promise_and_whitening_is_what_cleans_it(golden_noisy, monkeypatch):
    model, images = golden_noisy
    net, elbo, report = chained_rate(model, images)
    assert len(report.net_bits_per_dim) >= 45
    assert net <= 1.02 * elbo, (net, elbo)
    # the same chain without the keystream: image j pops what image j-1 pushed under its prior
    monkeypatch.setattr(S, "keystream", lambda j, n, stream=0: np.zeros(n, np.uint32))
    dirty, _, _ = chained_rate(model, images)
    assert dirty > 1.05 * net and dirty > net + 0.3, (dirty, net, elbo)


def test_another_width_and_zdim_keeps_the_elbo_promise():
    torch.manual_seed(7)
    config = VDVAEConfig(
        image_size=16,
        width=24,
        zdim=6,
        num_mixtures=3,
        enc_blocks="16x2,16d2,8x1,8d2,4x1,4d4,1x1",
        dec_blocks="1x1,4m1,4x1,8m4,8x1,16m8,16x2",
    )
    model = VDVAE(config).eval()
    with torch.no_grad():  # small values in the zero-initialised last convolutions: the latents matter
        for name, p in model.named_parameters():
            if name.endswith("c4.weight") and not p.any():
                p.normal_(0.0, 0.05)
    net, elbo, report = chained_rate(model, crops(50, seed=4))
    assert len(report.net_bits_per_dim) >= 30 and net <= 1.02 * elbo, (net, elbo)


def test_the_breakdown_adds_up_to_the_archive(golden_noisy):
    model, images = golden_noisy
    archive, report = compress(model, images[:30])
    for r in report.records:
        if r.mode == "bits-back":
            assert r.net == pytest.approx(r.pixels + r.pushed - r.popped)
            assert r.pixels == pytest.approx(r.distortion, rel=0.01)  # the pixels are coded under p(x | z) itself
    # the archive is the container (magic, header, CRC32s, lengths) and the ANS words, which hold every image's net
    # bits (a stored WebP of odd length is padded by one byte) and the coder's final state
    padding = sum(8 for r in report.records if r.mode == "webp" and (r.net // 8) % 2)
    ans_bits = 8 * (report.archive_bytes - report.extra["container_bytes"])
    assert 0 <= ans_bits - (sum(r.net for r in report.records) + padding) <= 64


def test_non_finite_images_are_stored_and_nothing_escapes(tiny, monkeypatch):
    """A model whose posterior overflows for bright images: those are stored as WebP, flagged; dark ones chain."""
    with torch.no_grad():
        tiny.encoder.in_conv.weight.mul_(1e150)
    white = np.full((16, 16, 3), 255, np.uint8)
    images = crops(12) + [white] + crops(6, seed=3)
    archive, report = compress(tiny, images)
    assert report.records[12].mode == "webp" and "not finite" in report.records[12].reason
    assert all(np.array_equal(a, b) for a, b in zip(decompress(tiny, archive)[0], images, strict=False))
    # a panic of the coder (a BaseException) is caught where the coder is called: the image is stored instead

    class Panic(BaseException):
        pass

    def panicking(fn, *args):
        if getattr(fn, "__name__", "") == "decode":
            raise Panic("Invalid model parameter: std must be positive")
        return fn(*args)

    original = B._coder_call
    monkeypatch.setattr(B, "_coder_call", lambda fn, *args: original(lambda *a: panicking(fn, *a), *args))
    archive, report = compress(VDVAE(tiny.config).eval(), crops(12))
    assert {r.mode for r in report.records} == {"webp"}


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


def _forged(archive, edit=None, raw_header=None):
    """The archive with its header edited (and every CRC32 recomputed, as a forger would)."""
    header, payload = read_header(archive)
    crcs = np.array(header.pop("crc32"), dtype="<u4").tobytes()
    header["stored"] = [[j, n] for j, n in header["stored"].items()]
    if edit is not None:
        edit(header)
    if raw_header is None:
        return _pack(header, crcs + payload)
    body = (
        H.MAGIC
        + H.struct.pack("<HI", H.FORMAT_VERSION, len(raw_header))
        + raw_header
        + H.struct.pack("<I", len(crcs + payload))
        + crcs
        + payload
    )
    return body + H.struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize(
    "what,edit,fragment",
    [
        (
            "a name of 300 characters",
            lambda h: h.update(names=["a" * 300] + [f"{i}.png" for i in range(1, h["count"])]),
            "plain name of at most 255",
        ),
        ("names given as numbers", lambda h: h.update(names=list(range(h["count"]))), "plain name"),
        ("count as text", lambda h: h.update(count="3"), "'count' must be an integer"),
        ("stored images as text", lambda h: h.update(stored="abc"), "'stored' must list"),
        ("one name for several images", lambda h: h.update(names=["a.png"]), "must name its 3 images"),
        ("a name twice", lambda h: h.update(names=["a.png", "a.png", "b.png"]), "names two images alike"),
        ("a stored length past the end", lambda h: h.update(stored=[[0, 10**9]]), "'stored' must list"),
        ("an image size of text", lambda h: h.update(image_size="16"), "'image_size' must be an integer"),
    ],
)
def test_an_edited_header_is_one_sentence(tiny, what, edit, fragment):
    archive, _ = compress(tiny, crops(3))
    with pytest.raises(ArchiveError, match=fragment):
        decompress(tiny, _forged(archive, edit))


def test_headers_that_are_not_deflated_json_objects_or_inflate_to_gigabytes_are_refused(tiny):
    archive, _ = compress(tiny, crops(3))
    cases = {
        "not deflated": b"{not deflated}",
        "a list": zlib.compress(b"[1, 2, 3]"),
        "deeply nested": zlib.compress(b"[" * 100000 + b"]" * 100000),
        "a deflate bomb": zlib.compress(b" " * (80 * 2**20), 9),
    }
    for _what, raw in cases.items():
        with pytest.raises(ArchiveError, match="header"):
            read_header(_forged(archive, raw_header=raw))


def test_a_machine_or_model_that_computes_differently_is_refused(tiny):
    archive, _ = compress(tiny, crops(20))
    other = VDVAE(tiny.config).eval()
    other.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        other.decoder.out_net.out_conv.bias[0] += 1e-6  # a tiny numerical difference
    with pytest.raises(ArchiveError, match="computes the model's probabilities differently"):
        decompress(other, archive)


def test_an_image_that_decodes_wrongly_is_named(tiny, monkeypatch):
    """A difference the probes miss is caught by the image's CRC32, and the error names the image."""
    images = crops(20)
    archive, report = compress(tiny, images, [f"c{i:02d}.png" for i in range(20)])
    last = report.images - 1
    assert report.records[last].mode == "bits-back"
    original = B._pixel_probs

    def off_by_one(params, m, channel, levels):
        probs = original(params, m, channel, levels)
        return np.roll(probs, 1, axis=1) if channel == 2 else probs

    monkeypatch.setattr(B, "_pixel_probs", off_by_one)
    with pytest.raises(
        ArchiveError, match=rf"c{last:02d}\.png \(image {last}\) (does not decode|could not be decoded)"
    ):
        decompress(tiny, archive)


def test_the_missing_coder_names_the_extra(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "constriction", None)
    with pytest.raises(ImportError, match=r'pip install "vdvae-zoo\[compress\]"'):
        compress(tiny, crops(1))
    calls = []
    monkeypatch.setattr(vdvae_zoo.cli.base, "load", lambda *a, **k: calls.append(a))
    result = CliRunner().invoke(main, ["compress", "cifar10", str(TINY), "-o", "x.vdz"])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "vdvae-zoo[compress]" in result.output
    assert not calls  # refused before loading a model


def test_the_cli_round_trip_reports_each_image_and_refuses_hostile_names(tmp_path, tiny):
    runner = CliRunner()
    folder = tiny.save_pretrained(tmp_path / "m")
    (tmp_path / "imgs").mkdir()
    images = crops(24)
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / "imgs" / f"p{i:02d}.png")
    out = runner.invoke(main, ["compress", str(folder), str(tmp_path / "imgs"), "-o", str(tmp_path / "a.vdz")])
    assert out.exit_code == 0, out.output
    stored = int(out.output.split(" stored as lossless WebP (")[0].split()[-1])
    coded = [line for line in out.output.splitlines() if "draw's KL + distortion" in line]
    assert 0 < stored < 24 and len(coded) == 24 - stored and coded[0].strip().startswith(f"p{stored:02d}.png: ")
    assert "as PNG" in out.output
    back = runner.invoke(
        main, ["decompress", str(tmp_path / "a.vdz"), "-o", str(tmp_path / "out"), "--model", str(folder)]
    )
    assert back.exit_code == 0, back.output
    for i, im in enumerate(images):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / f"p{i:02d}.png")), im)
    evil = _forged((tmp_path / "a.vdz").read_bytes(), lambda h: h.update(names=["../../evil.png"] + h["names"][1:]))
    (tmp_path / "evil.vdz").write_bytes(evil)
    result = runner.invoke(
        main, ["decompress", str(tmp_path / "evil.vdz"), "-o", str(tmp_path / "out2"), "--model", str(folder)]
    )
    assert result.exit_code == 1 and "not a plain name" in result.output and not (tmp_path / "evil.png").exists()
    assert not (tmp_path / "out2").exists()
    # two files of the same name in different folders: refused before any work
    (tmp_path / "imgs" / "sub").mkdir()
    Image.fromarray(images[0]).save(tmp_path / "imgs" / "sub" / "p00.png")
    twice = runner.invoke(main, ["compress", str(folder), str(tmp_path / "imgs"), "-o", str(tmp_path / "b.vdz")])
    assert twice.exit_code == 1 and "two images are named 'p00.png'" in twice.output


def test_a_five_bit_model_is_refused(tiny):
    five_bit = VDVAE(VDVAEConfig.from_dict(tiny_config_dict(low_bit=True))).eval()
    with pytest.raises(ValueError, match="5-bit"):
        compress(five_bit, crops(2))
