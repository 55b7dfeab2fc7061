"""compress / decompress: lossless archives of images with bits-back coding (compress.py)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import click
import numpy as np

from ..compress import ArchiveError, compress, decompress, read_header
from ..files import atomic_write, refuse_existing
from ..images import find_images, load_images, save_png
from .base import MODEL_HELP, load_model, main, manifest_option, model_options, overwrite_option, user_errors


def _sizes(images) -> tuple:
    """Bytes of the same images as lossless WebP and as PNG (Pillow's best settings)."""
    from PIL import Image
    webp = png = 0
    for image in images:
        for fmt, kwargs in (("WEBP", dict(lossless=True, quality=100, method=6)), ("PNG", dict(optimize=True))):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format=fmt, **kwargs)
            if fmt == "WEBP":
                webp += len(buf.getvalue())
            else:
                png += len(buf.getvalue())
    return webp, png


@main.command("compress", epilog=MODEL_HELP)
@click.argument("model_name", metavar="MODEL")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The archive to write (.vdz).")
@click.option("--resize", type=click.Choice(["none", "center-crop"]), default="none", show_default=True,
              help="center-crop: resize images of another size (then the archive holds the resized images: not "
                   "lossless for the originals).")
@overwrite_option
@model_options
@user_errors
def compress_command(model_name, paths, output, resize, overwrite, config, device, dtype, manifest):
    """Losslessly compress images with bits-back coding (needs: pip install "vdvae-zoo[compress]").

    Example: vdvae-zoo compress cifar10 photos/ -o photos.vdz && vdvae-zoo decompress photos.vdz -o restored/
    """
    refuse_existing(output, overwrite)
    model = load_model(model_name, config, "cpu", manifest, "float32")
    files = find_images(paths)
    images, kept, skipped = load_images(files, size=model.config.image_size, resize=None if resize == "none" else resize)
    for p, why in skipped:
        click.echo(f"warning: skipped {p}: {why}", err=True)
    if not len(kept):
        raise click.ClickException("no image of the model's size to compress (--resize center-crop resizes others)")
    if resize != "none":
        click.echo("note: --resize: the archive holds the resized images, not your originals", err=True)
    names = [p.name for p in kept]
    if len(set(names)) != len(names):
        raise click.ClickException("two images have the same file name; an archive stores names without folders")
    info = model.provenance.to_dict()
    archive, report = compress(model, list(images), names, model_name=model_name, model_sha256=info.get("sha256", ""))
    atomic_write(output, archive, overwrite=True)
    dims = images.shape[0] * images[0].size
    elbo = model.likelihood(images).bpd
    webp, png = _sizes(images)
    net = report.net_bits_per_dim
    click.echo(f"wrote {output}: {len(kept)} images, {report.archive_bytes:,} bytes = {report.bits_per_dim:.3f} bits "
               f"per dim ({report.seconds_per_image:.2f} s per image)")
    click.echo(f"  the first {report.webp_images} stored as lossless WebP ({report.webp_bytes:,} bytes): the bits the "
               f"next images' latents are popped from")
    for name, rate, bound in zip(names[report.webp_images:], net, elbo[report.webp_images:].tolist()):
        click.echo(f"  {name}: {rate:.3f} bits per dim (the model's ELBO: {bound:.3f})")
    if net:
        later = elbo[report.webp_images:].double().mean().item()
        click.echo(f"  bits-back images: {np.mean(net):.3f} bits per dim each on average; the model's ELBO on them "
                   f"{later:.3f}")
    click.echo(f"  the same images as lossless WebP: {8 * webp / dims:.3f}, as PNG: {8 * png / dims:.3f} bits per dim")


@main.command("decompress")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False), help="Folder for the images.")
@click.option("--model", "model_name", default=None, help="The model the archive was made with (default: the name "
                                                          "recorded in it).")
@overwrite_option
@click.option("--config", default=None, help="Architecture of an original .th file.")
@manifest_option
@user_errors
def decompress_command(archive, outdir, model_name, overwrite, config, manifest):
    """Restore the images of an archive, bit-exact (the PNG files hold exactly the pixels that were compressed).

    Example: vdvae-zoo decompress photos.vdz -o restored/
    """
    data = Path(archive).read_bytes()
    try:
        header, _ = read_header(data)
    except ArchiveError as e:
        raise click.ClickException(f"{archive}: {e}") from None
    model_name = model_name or header.get("model")
    if not model_name:
        raise click.ClickException(f"{archive} does not name its model; pass --model")
    names = header["names"]
    bad = [n for n in names if Path(n).name != n or n.startswith(".") or not n]
    if bad:
        raise click.ClickException(f"{archive} holds file names that are not plain names ({bad[0]!r}); refused")
    targets = [Path(outdir) / Path(n).with_suffix(".png").name for n in names]
    for t in targets:
        refuse_existing(t, overwrite)
    model = load_model(model_name, config, "cpu", manifest, "float32")
    expected = header.get("model_sha256")
    actual = model.provenance.sha256
    if expected and actual and expected != actual:
        raise click.ClickException(f"{archive} was made with weights of sha256 {expected[:12]}..., but {model_name} "
                                   f"has {actual[:12]}...; pass --model with the right weights")
    try:
        images, _ = decompress(model, data)
    except ArchiveError as e:
        raise click.ClickException(f"{archive}: {e}") from None
    for target, image in zip(targets, images):
        save_png(image, target, overwrite=overwrite)
    click.echo(f"wrote {len(images)} images to {outdir}", file=sys.stdout)
