"""compress / decompress: lossless archives of images with bits-back coding (compress.py)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import click

from ..coding.archive import ArchiveError, compress, decompress_iter, require_coder
from ..coding.grid import DEFAULT_GRID, parse_grid
from ..coding.header import read_header
from ..data.files import atomic_write, read_user_bytes, refuse_existing
from ..data.images import find_images, load_images, save_png
from ..scoring.engine import printable_path
from .base import (
    MODEL_HELP,
    interrupted_status,
    load_model,
    main,
    manifest_option,
    overwrite_option,
    refuse_outputs,
    resize_option,
    user_errors,
)
from .params import Folder, Readable

_CPU_NOTE = (
    "The coder runs the model on the CPU in float64, one thread (both sides must compute bit-identical "
    "probabilities), whatever GPU or precision other commands use."
)


def _webp_and_png_bytes(image) -> tuple:
    """Bytes of one image as lossless WebP and as PNG (Pillow's best settings), for the comparison line."""
    from PIL import Image

    sizes = []
    for fmt, kwargs in (("WEBP", dict(lossless=True, quality=100, method=6)), ("PNG", dict(optimize=True))):
        buf = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format=fmt, **kwargs)
        sizes.append(len(buf.getvalue()))
    return tuple(sizes)


@main.command("compress", epilog=MODEL_HELP)
@click.argument("model_name", metavar="MODEL")
@click.argument("paths", nargs=-1, required=True, type=Readable(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The archive to write (.vdz).")
@resize_option
@overwrite_option
@click.option("--config", default=None, help="Architecture of an original .th file: preset name or config.json.")
@click.option(
    "--grid",
    "grid_text",
    default="auto",
    show_default=True,
    metavar="auto|default|DELTA:SPAN",
    help=f"The latents' grid: chosen by a dry run on the first images (auto), the default "
    f"{DEFAULT_GRID.as_option()}, or given (bucket width and span in prior standard deviations, e.g. "
    "2^-5:64). The archive records it.",
)
@click.option(
    "--report",
    is_flag=True,
    help="Also show, per image, its coded bits against the ELBO of the same "
    "draw and where the difference goes, and each grid the dry run tried.",
)
@manifest_option
@user_errors
def compress_command(model_name, paths, output, resize, overwrite, config, grid_text, report, manifest):
    """Losslessly compress images with bits-back coding (needs: pip install "vdvae-zoo[compress]").

    Each image is listed as it is coded: the bits its latents popped, its pixels and latents pushed, and the
    KL + distortion of the coded draw (what its cost should be close to). The first images are stored as
    lossless WebP: they are the bits the later images' latents are popped from (docs/compress.md). The
    latents' grid is chosen on the first images (a dry run of a few candidates; the time it took is printed).

    Example: vdvae-zoo compress cifar10 photos/ -o photos.vdz && vdvae-zoo decompress photos.vdz -o restored/
    """
    require_coder()  # before anything is loaded
    try:
        grid = parse_grid(grid_text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--grid'") from None
    refuse_outputs([output], overwrite, inputs=paths)
    files = find_images(paths)
    names = [p.name for p in files]
    doubles = sorted({n for n in names if names.count(n) > 1})
    if doubles:
        raise click.ClickException(
            f"two images are named {doubles[0]!r}; an archive stores names without folders, so rename one of them"
        )
    if not files:
        raise click.ClickException(f"no image files in {', '.join(paths)}")
    model = load_model(model_name, config, "cpu", manifest, "float32")
    size, dims = model.config.image_size, model.config.dims_per_image
    if resize != "none":
        click.echo("note: --resize: the archive holds the resized images, not your originals", err=True)
    totals = {"webp": 0, "png": 0, "n": 0}

    def read():  # one image at a time: memory does not grow with the folder
        for p in files:
            images, kept, skipped = load_images(
                [p], size=size, resize=None if resize == "none" else resize, channels=model.config.image_channels
            )
            if skipped:
                click.echo(f"warning: skipped {printable_path(p)}: {skipped[0][1]}", err=True)
                continue
            webp, png = _webp_and_png_bytes(images[0])
            totals["webp"] += webp
            totals["png"] += png
            totals["n"] += 1
            yield p.name, images[0]

    from ..data.progress import progress_bar

    click.echo(
        "key: per image, in bits per dim of that image: net = pixels + latents pushed - latents popped back (what the "
        "image added to the archive), beside the KL plus distortion of the coded draw (the ELBO net should be near)"
    )
    with progress_bar(total=len(files), unit="img", desc="compressing") as bar:

        def show(r):
            with bar.external_write_mode():
                if r.mode == "bits-back":  # every figure in bits per dim of this image (H x W x C numbers)
                    click.echo(
                        f"  {r.name}: {r.net / dims:.3f} bits/dim net = pixels {r.pixels / dims:.3f} + latents "
                        f"pushed {r.pushed / dims:.3f} - latents popped back {r.popped / dims:.3f} (bits per "
                        f"dim of this image; its draw's KL + distortion: {(r.kl + r.distortion) / dims:.3f})"
                    )
                    if report:
                        click.echo("    " + _excess_line(r, dims))
                else:
                    click.echo(f"  {r.name}: stored as lossless WebP, {r.net / dims:.3f} bits per dim ({r.reason})")
            bar.update(1)

        try:
            archive, summary = compress(
                model,
                read(),
                model_name=model_name,
                grid=grid,
                model_sha256=model.provenance.sha256 or "",
                progress=show,
            )
        except KeyboardInterrupt:
            click.echo(
                f"\ninterrupted: nothing was written ({output} is written only when every image is coded)", err=True
            )
            sys.exit(interrupted_status())
    if totals["n"] == 0:
        raise click.ClickException(f"no image of {size}x{size} to compress (--resize center-crop resizes others)")
    atomic_write(output, archive, overwrite=overwrite)
    all_dims = dims * summary.images
    click.echo(
        f"wrote {output}: {summary.images} images, {summary.archive_bytes:,} bytes = {summary.bits_per_dim:.3f} "
        f"bits per dim ({summary.seconds_per_image:.2f} s per image)"
    )
    click.echo(
        f"  {summary.webp_images} stored as lossless WebP ({summary.webp_bytes:,} bytes), "
        f"{len(summary.net_bits_per_dim)} with bits-back"
    )
    click.echo("  " + _grid_line(summary.grid_choice, summary.grid["description"]))
    if report:
        for candidate in summary.grid_choice.get("candidates", []):
            nets = ", ".join("refused" if v is None else f"{v:.3f}" for v in candidate["net_bits_per_dim"])
            click.echo(f"    tried {candidate['grid']}: {nets} bits per dim on the dry run's images")
    coded = [r for r in summary.records if r.mode == "bits-back"]
    if coded:
        net = sum(r.net for r in coded) / (dims * len(coded))
        draw = sum(r.kl + r.distortion for r in coded) / (dims * len(coded))
        click.echo(
            f"  bits-back images: {net:.3f} bits per dim each on average; KL + distortion of their draws {draw:.3f}"
        )
    click.echo(
        f"  the same images as lossless WebP: {totals['webp']:,} bytes = {8 * totals['webp'] / all_dims:.3f} "
        f"bits per dim; as PNG: {totals['png']:,} bytes = {8 * totals['png'] / all_dims:.3f} bits per dim"
    )
    best = min(("lossless WebP", totals["webp"]), ("PNG", totals["png"]), key=lambda t: t[1])
    verdict = "smaller" if summary.archive_bytes < best[1] else "larger"
    click.echo(
        f"  the archive is {summary.archive_bytes / best[1]:.3f}x the size of {best[0]}, the best of the two: "
        f"{verdict}" + ("" if verdict == "smaller" else " (a model that fits these images better pays off)")
    )


def _grid_line(choice: dict, description: str) -> str:
    """How the archive's latent grid was chosen, in one line."""
    if choice.get("chosen") == "given":
        return f"latent grid: {description} (given)"
    return (
        f"latent grid: {description}, chosen from {len(choice['candidates'])} candidates by a dry run on the first "
        f"{choice['images']} images ({choice['seconds']:.1f} s)"
    )


def _excess_line(r, dims: int) -> str:
    """A bits-back image's coded bits against the ELBO of its own draw, and where the difference goes (bits/dim)."""
    elbo = (r.kl + r.distortion) / dims
    parts = " + ".join(f"{name} {bits / dims:+.4f}" for name, bits in r.excess.items())
    return (
        f"coded {r.net / dims:.3f} against this draw's ELBO {elbo:.3f} (KL {r.kl / dims:.3f} + distortion "
        f"{r.distortion / dims:.3f}): {r.net / dims - elbo:+.4f} = {parts}"
        + (f"; {r.clipped} latents lay beyond the grid" if r.clipped else "")
    )


@main.command("decompress")
@click.argument("archive", type=Readable())
@click.option("-o", "--outdir", required=True, type=Folder(), help="Folder for the images.")
@click.option(
    "--model",
    "model_name",
    default=None,
    help="The model the archive was made with (default: the name recorded in it).",
)
@overwrite_option
@click.option("--config", default=None, help="Architecture of an original .th file.")
@manifest_option
@user_errors
def decompress_command(archive, outdir, model_name, overwrite, config, manifest):
    """Restore the images of an archive, bit-exact (the PNG files hold exactly the pixels that were compressed).

    Images come back last first (the coder is a stack), each written as soon as it is decoded and checked.

    Example: vdvae-zoo decompress photos.vdz -o restored/
    """
    data = read_user_bytes(archive, what="archive", kind="archive")
    try:
        header, _ = read_header(data)
    except ArchiveError as e:
        raise click.ClickException(f"archive {archive}: {e}") from None
    model_name = model_name or header.get("model")
    if not model_name:
        raise click.ClickException(f"{archive} does not name its model; pass --model")
    targets = [Path(outdir) / Path(n).with_suffix(".png").name for n in header["names"]]
    for t in targets:
        refuse_existing(t, overwrite)
    if len(header["stored"]) < header["count"]:
        require_coder()
    model = load_model(model_name, config, "cpu", manifest, "float32")
    expected, actual = header.get("model_sha256"), model.provenance.sha256
    if expected and actual and expected != actual:
        raise click.ClickException(
            f"{archive} was made with weights of sha256 {expected[:12]}..., but {model_name} "
            f"has {actual[:12]}...; pass --model with the right weights"
        )
    from ..data.progress import progress_bar

    written = 0
    try:
        with progress_bar(total=header["count"], unit="img", desc="decompressing") as bar:
            for j, _name, image in decompress_iter(model, data):
                save_png(image, targets[j], overwrite=overwrite)
                written += 1
                bar.update(1)
    except ArchiveError as e:
        raise click.ClickException(f"archive {archive}: {e} ({written} images were written before it)") from None
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: {written} of {header['count']} images were written to {outdir}", err=True)
        sys.exit(interrupted_status())
    click.echo(f"wrote {written} images to {outdir}")
