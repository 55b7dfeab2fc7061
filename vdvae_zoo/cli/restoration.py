"""The restore command: inpainting, super-resolution and denoising with a model as the prior."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from ..data.images import ImageReadError, make_grid, read_image, save_png
from ..restore import METHODS, operator_for, restore
from .base import MODEL_HELP, load_model, main, model_options, overwrite_option, refuse_outputs, user_errors
from .params import SEED, TEMPERATURE, TEMPERATURE_FORMS, Count, Readable, Real, RealOrAuto


def _read(path: str, channels: int, what: str) -> np.ndarray:
    try:
        return read_image(path, channels=channels)
    except ImageReadError as e:
        raise click.BadParameter(f"{path}: {e.reason}", param_hint=what) from None


def _mask(path: str, size: int) -> np.ndarray:
    """A binary mask of the model's size: white (or 1) = observed, black (0) = missing."""
    mask = _read(path, 1, "'--mask'")[..., 0]
    if mask.shape != (size, size):
        raise click.BadParameter(
            f"{path} is {mask.shape[1]}x{mask.shape[0]}; the mask must be {size}x{size}, the model's size",
            param_hint="'--mask'",
        )
    values = set(np.unique(mask).tolist())
    if not values <= {0, 255} and not values <= {0, 1}:
        raise click.BadParameter(
            f"{path} is not binary (it holds {len(values)} grey levels); use black (0) for "
            "missing pixels and white (255) for observed ones",
            param_hint="'--mask'",
        )
    return (mask > 0).astype(np.float32)


@main.command("restore", epilog=MODEL_HELP)
@click.argument("model_name", metavar="MODEL")
@click.argument("image", type=Readable())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The restored image (PNG).")
@click.option(
    "--mask",
    default=None,
    type=Readable(),
    help="Inpainting: a black-and-white PNG of the model's size, white = observed.",
)
@click.option(
    "--upscale",
    default=None,
    type=Count(2, 64),
    help="Super-resolution: IMAGE is the model's size divided by this.",
)
@click.option(
    "--denoise",
    default=None,
    type=Real(0.0, 1_000.0, low_open=True),
    help="Denoising: IMAGE holds Gaussian noise of this standard deviation, on the 0..255 scale.",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="pnp-hvae",
    show_default=True,
    help="pnp-hvae (Prost et al. 2023) or encode-decode (keep the top layers of the degraded image).",
)
@click.option("--steps", default=30, show_default=True, type=Count(1, 10_000), help="PnP-HVAE iterations.")
@click.option(
    "-t",
    "--temperature",
    default=None,
    type=TEMPERATURE,
    help=f"The prior's temperature per layer (PnP-HVAE: its weight is 1/T^2 - coupling): {TEMPERATURE_FORMS}. "
    "Default: the task's, chosen by measurement (docs/restore.md).",
)
@click.option(
    "--decoder-std",
    default="auto",
    show_default=True,
    type=RealOrAuto(0.0, 255.0, words=("auto", "decoder"), low_open=True),
    help="The x-step's standard deviation of the decoder, on the 0..255 scale (PnP-HVAE: 3 or 5); decoder: the "
    "decoder's own variance; auto: the task's default.",
)
@click.option(
    "--noise",
    default=None,
    type=Real(0.0, 1_000.0),
    help="With --mask or --upscale: the observation's Gaussian noise, on the 0..255 scale (default: 0 for --mask, "
    "which then keeps every observed pixel exactly; 1 for --upscale).",
)
@click.option(
    "--coupling",
    default=1.0,
    show_default=True,
    type=Real(0.0, 100.0, low_open=True),
    help="PnP-HVAE's weight of the encoder's posterior against the decoder.",
)
@click.option("--keep", default=None, type=Count(0, 10_000), help="encode-decode: layers kept (default half).")
@click.option(
    "--samples",
    default=1,
    show_default=True,
    type=Count(1, 1_000),
    help="Posterior samples; with more than one, OUTPUT is their mean and OUTPUT.std.png their spread.",
)
@click.option(
    "--seed", default=0, show_default=True, type=SEED, help="Seed of the draws (with --samples or encode-decode)."
)
@overwrite_option
@model_options
@user_errors
def restore_command(
    model_name,
    image,
    output,
    mask,
    upscale,
    denoise,
    method,
    steps,
    temperature,
    decoder_std,
    noise,
    coupling,
    keep,
    samples,
    seed,
    overwrite,
    config,
    device,
    dtype,
    manifest,
):
    """Restore IMAGE with MODEL as the prior: one of --mask, --upscale, --denoise (docs/restore.md).

    Example: vdvae-zoo restore ffhq256 face.png --mask holes.png -o restored.png

    Example: vdvae-zoo restore ffhq256 small.png --upscale 4 -o large.png --samples 8
    """
    if noise is not None and denoise:
        raise click.UsageError("--noise is for --mask and --upscale; --denoise gives the noise of its image")
    given = [name for name, value in (("--mask", mask), ("--upscale", upscale), ("--denoise", denoise)) if value]
    if len(given) != 1:
        raise click.UsageError(
            "give exactly one of --mask (inpainting), --upscale (super-resolution) and --denoise"
            + (f"; got {' and '.join(given)}" if given else "")
        )
    std_path = Path(output).with_suffix(".std.png")
    refuse_outputs([output] + ([str(std_path)] if samples > 1 else []), overwrite, inputs=[image, mask])
    model = load_model(model_name, config, device, manifest, dtype)
    size, channels = model.config.image_size, model.config.image_channels
    observed = _read(image, channels, "'IMAGE'")
    if upscale:
        if size % upscale:
            raise click.BadParameter(
                f"{upscale} does not divide the model's size {size}; choose a divisor such as "
                f"{', '.join(str(f) for f in (2, 4, 8) if size % f == 0)}",
                param_hint="'--upscale'",
            )
        expected = size // upscale
    else:
        expected = size
    if observed.shape[:2] != (expected, expected):
        raise click.BadParameter(
            f"{image} is {observed.shape[1]}x{observed.shape[0]}; "
            + (
                f"with --upscale {upscale} it must be {expected}x{expected} (the model's {size} / {upscale})"
                if upscale
                else f"it must be {size}x{size}, the model's size"
            ),
            param_hint="'IMAGE'",
        )
    operator = (
        operator_for("mask", _mask(mask, size), noise)
        if mask
        else operator_for("upscale", upscale, noise)
        if upscale
        else operator_for("denoise", denoise)
    )
    result = restore(
        model,
        observed[None],
        operator,
        steps=steps,
        temperature=temperature,
        decoder_std=decoder_std if decoder_std == "auto" else None if decoder_std == "decoder" else decoder_std / 255,
        coupling=coupling,
        seed=seed,
        samples=samples,
        method=method,
        keep=keep,
    )
    save_png(result.images[0], output, overwrite=overwrite)
    used = result.options
    std_text = "the decoder's" if used["decoder_std"] is None else f"{used['decoder_std'] * 255:g}/255"
    click.echo(
        f"wrote {output} ({method}, T={used['temperature']}, decoder_std {std_text}, observation noise "
        f"{used['sigma'] * 255:g}/255"
        + (": observed pixels kept exactly" if mask and used["sigma"] == 0 else "")
        + f"; {result.seconds_per_image:.1f} s)"
    )
    if samples > 1:
        std = result.std[0]
        top = float(std.max())
        spread = np.round(std / top * 255).astype(np.uint8) if top > 0 else np.zeros(std.shape, np.uint8)
        save_png(make_grid(spread[None], zoom=1), std_path, overwrite=overwrite)
        click.echo(
            f"wrote {std_path}: the {samples} samples' per-pixel standard deviation, scaled to its own range "
            f"(black = 0, white = {top * 255:.2f} levels of 255; mean {float(std.mean()) * 255:.2f})"
        )
