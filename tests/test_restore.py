"""Restoration with the prior: operators and their adjoints, the data step, what inpainting keeps, the seed rule,
the command line and its refusals."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import random_images, tiny_config_dict
from PIL import Image

import vdvae_zoo
from vdvae_zoo import VDVAE, VDVAEConfig
from vdvae_zoo.cli import main
from vdvae_zoo.restore import Denoising, Downsampling, Inpainting, _data_step, psnr, restore, ssim


def _mask(size=16, seed=0):
    rng = np.random.default_rng(seed)
    return torch.tensor((rng.random((size, size)) > 0.4).astype(np.float32))


@pytest.mark.parametrize(
    "operator,small", [(Inpainting(_mask()), 16), (Downsampling(2), 8), (Downsampling(4), 4), (Denoising(0.1), 16)]
)
def test_each_operators_adjoint_is_its_transpose(operator, small):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 16, 16, 3, generator=g, dtype=torch.float64).float()
    y = torch.rand(2, small, small, 3, generator=g, dtype=torch.float64).float()
    left = (operator.forward(x).double() * y.double()).sum()
    right = (x.double() * operator.adjoint(y).double()).sum()
    assert float(left) == pytest.approx(float(right), rel=1e-6)


def test_the_data_step_solves_its_normal_equations():
    g = torch.Generator().manual_seed(2)
    mu, var = torch.rand(1, 16, 16, 3, generator=g), torch.rand(1, 16, 16, 3, generator=g) * 0.1 + 0.004
    noisy = torch.rand(1, 16, 16, 3, generator=g)
    op = Denoising(0.1)
    x = _data_step(op, noisy, mu, var, 1.0, start=noisy)
    closed = (noisy / 0.01 + mu / var) / (1 / 0.01 + 1 / var)  # diagonal: the minimiser in closed form
    assert torch.allclose(x, closed, atol=1e-5)
    op = Downsampling(4)
    small = torch.rand(1, 4, 4, 3, generator=g)
    x = _data_step(op, small, mu, var, 0.5, start=op.initial(small)).double()
    residual = op.adjoint(op.forward(x.float()) - small).double() / op.sigma**2 + 0.5 * (x - mu.double()) / var
    assert residual.abs().max() < 1e-3 * (1 / op.sigma**2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VDVAE(VDVAEConfig.from_dict(tiny_config_dict())).eval()


@pytest.mark.parametrize("method", ["pnp-hvae", "encode-decode"])
def test_inpainting_keeps_every_observed_pixel_exactly(model, method):
    images = random_images(2, size=16, seed=4).numpy()
    op = Inpainting(_mask(seed=3))
    observed = (op.forward(torch.tensor(images).float() / 255) * 255).round().byte().numpy()
    result = restore(model, observed, op, steps=3, method=method)
    m = op.mask.numpy().astype(bool)
    assert result.images.shape == images.shape
    assert np.array_equal(result.images[:, m], images[:, m])
    assert not np.array_equal(result.images[:, ~m], observed[:, ~m])  # the holes were filled, not left black


def test_results_follow_the_seed_rule(model):
    images = random_images(3, size=16, seed=5).numpy()
    op = Denoising(20 / 255)
    noisy = np.clip(images + np.random.default_rng(0).normal(0, 20, images.shape), 0, 255).astype(np.uint8)
    first = restore(model, noisy, op, steps=2, samples=3, seed=7)
    again = restore(model, noisy, op, steps=2, samples=3, seed=7)
    assert np.array_equal(first.samples, again.samples) and first.std.shape == images.shape
    assert first.std.max() > 0  # the samples differ: a posterior spread
    other_seed = restore(model, noisy, op, steps=2, samples=3, seed=8)
    assert not np.array_equal(first.samples, other_seed.samples)
    # image 1's result does not depend on the images restored with it (only on its position's seed)
    companions = noisy.copy()
    companions[0] = noisy[2]
    swapped = restore(model, companions[:2], op, steps=2, samples=3, seed=7)
    assert np.array_equal(swapped.samples[1], first.samples[1])


def test_super_resolution_and_metrics(model):
    images = random_images(1, size=16, seed=6).numpy()
    op = Downsampling(2)
    small = (op.forward(torch.tensor(images).float() / 255) * 255).round().byte().numpy()
    result = restore(model, small, op, steps=2)
    assert result.images.shape == (1, 16, 16, 3) and result.seconds_per_image > 0
    assert psnr(images[0], images[0]) == float("inf") and ssim(images[0], images[0]) == pytest.approx(1.0)
    assert 0 < psnr(result.images[0], images[0]) < 60 and ssim(result.images[0], images[0]) < 1


def test_bad_arguments_are_one_sentence(model):
    with pytest.raises(ValueError, match="temperature must be in"):
        restore(model, np.zeros((1, 16, 16, 3), np.uint8), Denoising(0.1), temperature=1.5)
    with pytest.raises(ValueError, match="this model restores 16x16x3"):
        restore(model, np.zeros((1, 16, 16, 3), np.uint8), Downsampling(2))
    with pytest.raises(ValueError, match="method must be one of"):
        restore(model, np.zeros((1, 16, 16, 3), np.uint8), Denoising(0.1), method="magic")


@pytest.fixture()
def folder(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["new", "tiny32", "-o", str(tmp_path / "m")]).exit_code == 0
    image = random_images(1, size=32, seed=8).numpy()[0]
    Image.fromarray(image).save(tmp_path / "face.png")
    Image.fromarray(image[::4, ::4]).save(tmp_path / "small.png")
    mask = np.full((32, 32), 255, np.uint8)
    mask[10:20, 10:20] = 0
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path


def test_the_three_tasks_run_from_the_command_line(folder):
    runner = CliRunner()
    m = str(folder / "m")
    for args in (["--mask", str(folder / "mask.png")], ["--upscale", "4"], ["--denoise", "25"]):
        source = folder / ("small.png" if "--upscale" in args else "face.png")
        out = folder / f"out{args[0]}.png"
        result = runner.invoke(main, ["restore", m, str(source), "-o", str(out), "--steps", "2", *args])
        assert result.exit_code == 0, result.output
        assert np.asarray(Image.open(out)).shape == (32, 32, 3)
    result = runner.invoke(
        main,
        [
            "restore",
            m,
            str(folder / "face.png"),
            "-o",
            str(folder / "s.png"),
            "--denoise",
            "25",
            "--steps",
            "2",
            "--samples",
            "3",
        ],
    )
    assert result.exit_code == 0 and (folder / "s.std.png").is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--upscale", "3"], "3 does not divide the model's size 32"),
        (["--upscale", "2"], "with --upscale 2 it must be 16x16"),
        (["--mask", "wrong-size"], "the mask must be 32x32"),
        (["--mask", "grey"], "is not binary"),
        (["--denoise", "25", "--upscale", "2"], "give exactly one of"),
    ],
)
def test_bad_input_is_one_sentence(folder, args, message):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "wrong-size.png")
    Image.fromarray(np.arange(32 * 32).reshape(32, 32).astype(np.uint8)).save(folder / "grey.png")
    args = [str(folder / f"{a}.png") if a in ("wrong-size", "grey") else a for a in args]
    image = folder / ("face.png")
    result = CliRunner().invoke(main, ["restore", str(folder / "m"), str(image), "-o", str(folder / "x.png"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (folder / "x.png").exists()


def test_the_api_is_exported():
    assert vdvae_zoo.restore is restore and vdvae_zoo.Inpainting is Inpainting


# ------------------------------------------------------------------ PnP-HVAE's own settings (#38 section 1)
def test_decoder_std_replaces_the_decoders_variance(model):
    """A constant decoder_std is the x-step's variance everywhere; None keeps the decoder's, clamped."""
    from vdvae_zoo.restore import VARIANCE_RANGE, _latent_step

    x = torch.tensor(random_images(1, size=16, seed=9).numpy()).float() / 255
    temperatures = [0.8] * model.num_layers
    mu, var = _latent_step(model, x, 1.0, temperatures, 3 / 255, None)
    assert torch.all(var == (3 / 255) ** 2)
    mu_own, var_own = _latent_step(model, x, 1.0, temperatures, None, None)
    assert torch.equal(mu, mu_own) and not torch.equal(var_own, var)
    assert var_own.min() >= VARIANCE_RANGE[0] and var_own.max() <= VARIANCE_RANGE[1]
    # in the closed-form denoising step the constant weighs the decoder's mean against the observation
    noisy = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(3))
    step = _data_step(Denoising(25 / 255), noisy, mu, var, 1.0, start=noisy)
    s2, d2 = (25 / 255) ** 2, (3 / 255) ** 2
    assert torch.allclose(step, (noisy / s2 + mu / d2) / (1 / s2 + 1 / d2), atol=1e-5)


def test_a_linear_temperature_schedule_runs_top_to_bottom(model):
    from vdvae_zoo.nn.inputs import LinearTemperature

    schedule = LinearTemperature(0.3, 0.8)
    values = model.layer_temperatures(schedule)
    assert len(values) == model.num_layers and values[0] == 0.3 and values[-1] == pytest.approx(0.8)
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    noisy = random_images(1, size=16, seed=10).numpy()
    op = Denoising(20 / 255)
    linear = restore(model, noisy, op, steps=2, temperature=schedule, decoder_std=None)
    listed = restore(model, noisy, op, steps=2, temperature=values, decoder_std=None)
    constant = restore(model, noisy, op, steps=2, temperature=0.3, decoder_std=None)
    assert np.array_equal(linear.images, listed.images)  # the schedule is exactly its list
    assert not np.array_equal(linear.images, constant.images)  # and each layer's temperature is used
    assert linear.options["temperature"] == "0.3..0.8"
    with pytest.raises(ValueError, match="at every layer"):
        restore(model, noisy, op, temperature=LinearTemperature(0.5, 1.5))


def test_only_a_noiseless_inpainting_is_projected(model):
    """sigma = 0 keeps the observed pixels exactly; with sigma > 0 the noisy observation is not pasted back."""
    images = random_images(1, size=16, seed=11).numpy()
    mask = _mask(seed=12)
    m = mask.numpy().astype(bool)
    observed = (Inpainting(mask).forward(torch.tensor(images).float() / 255) * 255).round().byte().numpy()
    exact = restore(model, observed, Inpainting(mask), steps=3)
    assert np.array_equal(exact.images[:, m], images[:, m])
    noisy = restore(model, observed, Inpainting(mask, sigma=2 / 255), steps=3, decoder_std=20 / 255)
    assert not np.array_equal(noisy.images[:, m], images[:, m])  # the x-step weighs the observation, no paste
    assert np.abs(noisy.images[:, m].astype(int) - images[:, m]).max() <= 2  # at 100:1 here
    with pytest.raises(ValueError, match="needs a project method"):
        restore(model, observed, Denoising(0.0))


def test_samples_draw_x_too_so_the_spread_includes_the_pixels(model):
    """With samples > 1 the x-step draws from p(x | z, y). At a temperature so low that z has almost no spread, the
    samples' spread is the Gaussian's own standard deviation 1 / sqrt(1/s^2 + 1/d^2) (the z-only draw gave ~0)."""
    images = random_images(1, size=16, seed=13).numpy()
    s, d = 20 / 255, 10 / 255
    result = restore(model, images, Denoising(s), steps=2, samples=24, decoder_std=d, seed=1, temperature=0.01)
    own = (1 / s**2 + 1 / d**2) ** -0.5
    assert result.std.mean() == pytest.approx(own, rel=0.25)
    # a noiseless inpainting draws only the missing pixels: the observed ones have no spread
    mask = _mask(seed=14)
    m = mask.numpy().astype(bool)
    drawn = restore(model, images, Inpainting(mask), steps=2, samples=8, decoder_std=d, seed=1)
    assert drawn.std[0][m].max() == 0 and drawn.std[0][~m].mean() > 0.5 * d


def test_the_command_line_takes_pnp_hvaes_settings(folder):
    """-t TOP..BOTTOM, --decoder-std on the 0..255 scale and --noise give what the API gives with the same values."""
    from vdvae_zoo.nn.inputs import LinearTemperature

    runner = CliRunner()
    m, out = str(folder / "m"), folder / "settings.png"
    args = ["restore", m, str(folder / "face.png"), "-o", str(out), "--mask", str(folder / "mask.png"), "--steps", "2"]
    result = runner.invoke(main, [*args, "-t", "0.3..0.8", "--decoder-std", "3", "--noise", "4"])
    assert result.exit_code == 0, result.output
    assert "T=0.3..0.8, decoder_std 3/255, observation noise 4/255" in result.output
    mask = torch.tensor((np.asarray(Image.open(folder / "mask.png")) > 0).astype(np.float32))
    image = np.asarray(Image.open(folder / "face.png"))[None]
    expected = restore(
        vdvae_zoo.load(m),
        image,
        Inpainting(mask, sigma=4 / 255),
        steps=2,
        temperature=LinearTemperature(0.3, 0.8),
        decoder_std=3 / 255,
    )
    assert np.array_equal(np.asarray(Image.open(out)), expected.images[0])
    result = runner.invoke(main, [*args, "--decoder-std", "decoder", "--overwrite"])
    assert result.exit_code == 0 and "decoder_std the decoder's" in result.output and "kept exactly" in result.output
    for bad, message in ((["--decoder-std", "0"], "--decoder-std"), (["--noise", "3", "--denoise", "9"], "--noise is")):
        result = runner.invoke(main, [*args, "--overwrite", *bad])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_the_defaults_are_the_measured_best_settings():
    """Each operator's defaults are the setting that won on the tuning images (benchmarks/results_restore_cpu.json;
    super-resolution's one default serves x2 and x4: x2's best)."""
    import json
    from pathlib import Path

    chosen = json.loads((Path(__file__).parents[1] / "benchmarks" / "results_restore_cpu.json").read_text())["chosen"]

    def words(defaults, sigma=None):
        std = defaults["decoder_std"]
        text = f"T={defaults['temperature']}, decoder_std=" + ("decoder's" if std is None else f"{std * 255:g}/255")
        return text + ("" if sigma is None else f", sigma={sigma * 255:g}/255")

    mask = torch.ones(4, 4)
    assert chosen["inpainting"] == words(Inpainting.defaults, Inpainting(mask).sigma)
    assert chosen["x2"] == words(Downsampling.defaults)
    assert chosen["denoising"] == words(Denoising.defaults)


def test_every_temperature_option_takes_a_linear_schedule(folder):
    """-t TOP..BOTTOM is one parameter type (params.TEMPERATURE): sample draws with it exactly what the explicit
    per-layer list gives, and a sample set records it as written."""
    from vdvae_zoo.nn.inputs import LinearTemperature

    runner, m = CliRunner(), str(folder / "m")
    listed = ",".join(f"{t!r}" for t in LinearTemperature(1.0, 0.6).per_layer(vdvae_zoo.load(m).num_layers))
    for name, t in (("linear.png", "1.0..0.6"), ("listed.png", listed)):
        result = runner.invoke(main, ["sample", m, "-n", "2", "--seed", "3", "-t", t, "-o", str(folder / name)])
        assert result.exit_code == 0, result.output
    assert np.array_equal(np.asarray(Image.open(folder / "linear.png")), np.asarray(Image.open(folder / "listed.png")))
    result = runner.invoke(main, ["sample", m, "--num", "2", "-t", "1.0..0.6", "--outdir", str(folder / "set")])
    assert result.exit_code == 0 and '"temperature": "1..0.6"' in (folder / "set" / "samples.json").read_text()
    result = runner.invoke(main, ["sample", m, "-n", "2", "-t", "1..2..3", "-o", str(folder / "bad.png")])
    assert result.exit_code == 2 and "TOP..BOTTOM" in result.output
