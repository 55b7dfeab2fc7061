"""Commands on images: bpd, sample, encode, reconstruct, interpolate."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from ..data.datasets import files_dataset
from ..data.files import refuse_existing
from ..data.images import find_images, load_images, make_grid, save_png
from ..generation import sample_grid
from ..nn.inputs import figure4_keeps
from ..scoring.sample_sets import write_sample_set
from .base import (
    MODEL_HELP,
    batch_size_option,
    load_model,
    main,
    model_options,
    overwrite_option,
    picture_options,
    refuse_outputs,
    resize_option,
    stop_interrupted,
    user_errors,
)
from .params import MAX_IMAGES, SEED, TEMPERATURE, TEMPERATURE_FORMS, Count, Folder, Readable


# ---------------------------------------------------------------------------------------------------- bpd
@main.command(epilog=MODEL_HELP)
@click.argument("model_name", metavar="MODEL")
@click.option("-n", "--num", default=16, show_default=True, type=Count(1, MAX_IMAGES), help="Number of images.")
@click.option(
    "-t",
    "--temperature",
    default="1.0",
    show_default=True,
    type=TEMPERATURE,
    help=f"The sampling temperature: {TEMPERATURE_FORMS}.",
)
@click.option(
    "--seed", default=None, type=SEED, help="Makes the samples reproducible (with --outdir: 0 when not given)."
)
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False), help="A PNG grid.")
@click.option(
    "--outdir",
    default=None,
    type=Folder(),
    help="A sample set: 000000.png, 000001.png, ... and samples.json; image i depends only on (seed, i).",
)
@batch_size_option
@click.option("--resume", is_flag=True, help="With --outdir: keep the files there and draw only the missing ones.")
@click.option(
    "--exact",
    is_flag=True,
    help="Draw the pixels from exactly the distribution the likelihood scores (rounded to the nearest level, later "
    "channels given the earlier ones' levels); the default is the original's draw (truncated).",
)
@overwrite_option
@model_options
@user_errors
def sample(
    model_name,
    num,
    temperature,
    seed,
    output,
    outdir,
    batch_size,
    resume,
    exact,
    overwrite,
    config,
    device,
    dtype,
    manifest,
):
    """Draw images from the prior: a grid (-o), or a sample set of any size (--outdir), e.g. for FID.

    Example: vdvae-zoo sample ffhq256 -n 4 -t 0.8 --seed 0 -o faces.png

    Example: vdvae-zoo sample ffhq1024 --num 50000 -t 0.9 --outdir fid/ --batch-size 8   (Ctrl-C, then --resume)
    """

    t = temperature  # parsed by TEMPERATURE
    if output and outdir:
        raise click.UsageError("give -o (a grid) or --outdir (one PNG per sample), not both")
    if outdir:
        if Path(outdir).is_dir() and any(Path(outdir).iterdir()) and not (resume or overwrite):
            raise click.ClickException(
                f"{outdir} is not empty; --resume continues the sample set in it, --overwrite replaces its files"
            )
        model = load_model(model_name, config, device, manifest, dtype)
        try:
            report = write_sample_set(
                model,
                outdir,
                num,
                temperature=t,
                seed=0 if seed is None else seed,
                batch_size=batch_size,
                resume=resume,
                overwrite=overwrite,
                exact=exact,
            )
        except KeyboardInterrupt:
            stop_interrupted(f"the finished images are kept in {outdir}")
        for note in report.notes:
            click.echo(f"note: {note}", err=True)
        click.echo(f"wrote {report.written} PNGs to {outdir} ({report.kept} were there already); see samples.json")
        return
    output = output or "samples.png"
    refuse_existing(output, overwrite)
    model = load_model(model_name, config, device, manifest, dtype)
    save_png(sample_grid(model, num, t, seed, batch_size=batch_size, exact=exact), output, overwrite=overwrite)
    click.echo(f"wrote {output} ({num} samples)")


def _read_images_for(model, paths, resize: str):
    """Images of PATHS at the model's size; skipped files warned about one line each; none readable is an error."""
    images, kept, skipped = load_images(
        find_images(paths),
        size=model.config.image_size,
        resize=None if resize == "none" else resize,
        channels=model.config.image_channels,
    )
    for p, why in skipped:
        click.echo(f"warning: skipped {p}: {why}", err=True)
    if not kept:
        raise click.ClickException(
            f"no image in {', '.join(map(str, paths))} could be read at "
            f"{model.config.image_size}x{model.config.image_size} (try --resize center-crop)"
        )
    return images, kept


# --------------------------------------------------------------------------------------------------- encode
@main.command(epilog=MODEL_HELP)
@click.argument("model_name", metavar="MODEL")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help=".safetensors (every layer: z.0 ... z.{L-1}; with --flat: 'flat' rows) or .npy (needs --flat; "
    "writes OUTPUT.json beside it).",
)
@click.option(
    "--flat",
    default=None,
    type=Count(1, 10_000),
    help="The first N layers flattened, one row per image, instead of the per-layer tensors "
    "(docs/latents.md; imagenet64 and 31: 91,168 numbers).",
)
@click.option(
    "--stats",
    is_flag=True,
    help="Also the posterior mean and std: mean.i and std.i, or with --flat "
    "flat_mean and flat_std (.safetensors only).",
)
@click.option("--mean", "use_mean", is_flag=True, help="Posterior means instead of samples.")
@resize_option
@click.option(
    "--seed", default=0, show_default=True, type=SEED, help="Image i draws with image_seed(seed, i), as in bpd."
)
@batch_size_option
@overwrite_option
@model_options
@user_errors
def encode(
    model_name,
    paths,
    output,
    flat,
    stats,
    use_mean,
    resize,
    seed,
    batch_size,
    overwrite,
    config,
    device,
    dtype,
    manifest,
):
    """Posterior latents of images (files and folders), at any scale: read and encoded in chunks.

    Example: vdvae-zoo encode ffhq256 faces/ -o latents.safetensors --stats

    Example: vdvae-zoo encode imagenet64 stimuli/ -o features.npy --flat 31
    """
    from ..latents import encode_dataset, encode_outputs

    try:
        for path in encode_outputs(output, flat, stats):  # every file it writes, before any work
            refuse_existing(path, overwrite)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--output'") from None
    dataset = files_dataset(paths)
    model = load_model(model_name, config, device, manifest, dtype)
    summary = encode_dataset(
        model,
        dataset,
        output,
        flat=flat,
        stats=stats,
        mean=use_mean,
        seed=seed,
        batch_size=batch_size,
        resize=None if resize == "none" else resize,
        overwrite=overwrite,
    )
    width = f", {summary['flat_width']:,} numbers per image in the flat rows" if summary["flat_width"] else ""
    click.echo(
        f"wrote {output}: {summary['layers']} layers x {summary['images']} images{width}"
        + (f" ({summary['skipped']} files skipped)" if summary["skipped"] else "")
    )


# ----------------------------------------------------------------------------------------------- reconstruct
@main.command(epilog=MODEL_HELP)
@click.argument("model_name", metavar="MODEL")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--keep",
    default="auto",
    show_default=True,
    help="Numbers of layers to keep, comma-separated, 'all' for every layer; auto: the paper's 1,4,16,all "
    "where the model has that many layers.",
)
@click.option(
    "-t",
    "--temperature",
    default="0.1",
    show_default=True,
    type=TEMPERATURE,
    help=f"Temperature of the layers not kept: {TEMPERATURE_FORMS}.",
)
@picture_options("reconstructions.png")
@model_options
@user_errors
def reconstruct(model_name, paths, keep, temperature, output, resize, seed, overwrite, config, device, dtype, manifest):
    """One row per image: the original, then reconstructions keeping the first k layers (the paper's Figure 4).

    Example: vdvae-zoo reconstruct ffhq256 face.png --keep 1,4,16,all -o fig4.png
    """
    import torch

    t = temperature  # parsed by TEMPERATURE
    refuse_outputs([output], overwrite, inputs=paths)
    model = load_model(model_name, config, device, manifest, dtype)
    try:
        ks = (
            figure4_keeps(model.num_layers)
            if keep.strip() == "auto"
            else [model.num_layers if k.strip() == "all" else int(k) for k in keep.split(",")]
        )
    except ValueError:
        raise click.BadParameter(f"{keep!r} must be comma-separated integers or 'all'", param_hint="'--keep'") from None
    images, kept = _read_images_for(model, paths, resize)
    torch.manual_seed(seed)
    rows = model.reconstruct(images, keep=ks, temperature=t).numpy()  # (N, len(ks), H, W, 3)
    grid = np.concatenate([images[:, None], rows], axis=1).reshape(-1, *images.shape[1:])
    save_png(make_grid(grid, ncols=len(ks) + 1, zoom=None), output, overwrite=overwrite)
    click.echo(f"wrote {output}: {len(kept)} rows, columns original + keep {', '.join(map(str, ks))}")


# ----------------------------------------------------------------------------------------------- interpolate
@main.command(epilog=MODEL_HELP)
@click.argument("model_name", metavar="MODEL")
@click.argument("image_a", type=Readable())
@click.argument("image_b", type=Readable())
@click.option("--steps", default=8, show_default=True, type=Count(2, 1_000), help="Images on the path, ends included.")
@click.option("--keep", default="all", show_default=True, help="Layers to interpolate (the rest: prior, same noise).")
@click.option(
    "-t",
    "--temperature",
    default="0.1",
    show_default=True,
    type=TEMPERATURE,
    help=f"Temperature of the layers not kept: {TEMPERATURE_FORMS}.",
)
@click.option("--mode", type=click.Choice(["linear", "slerp"]), default="linear", show_default=True)
@picture_options("interpolation.png")
@model_options
@user_errors
def interpolate(
    model_name,
    image_a,
    image_b,
    steps,
    keep,
    temperature,
    mode,
    output,
    resize,
    seed,
    overwrite,
    config,
    device,
    dtype,
    manifest,
):
    """A row of images along the latent path from IMAGE_A to IMAGE_B.

    Example: vdvae-zoo interpolate ffhq256 a.png b.png --steps 8 --keep 20 -o path.png
    """
    import torch

    t = temperature  # parsed by TEMPERATURE
    refuse_outputs([output], overwrite, inputs=[image_a, image_b])
    model = load_model(model_name, config, device, manifest, dtype)
    try:
        k = model.num_layers if keep.strip() == "all" else int(keep)
    except ValueError:
        raise click.BadParameter(f"{keep!r} must be an integer or 'all'", param_hint="'--keep'") from None
    images, kept = _read_images_for(model, [image_a, image_b], resize)
    if len(kept) != 2:
        raise click.ClickException("both IMAGE_A and IMAGE_B must be readable images")
    torch.manual_seed(seed)
    path = model.interpolate(images[0], images[1], steps, keep=k, temperature=t, mode=mode).numpy()
    save_png(make_grid(path, ncols=steps, zoom=None), output, overwrite=overwrite)
    click.echo(f"wrote {output}: {steps} steps from {kept[0]} to {kept[1]}, {k} of {model.num_layers} layers kept")
