"""Commands on images: bpd, sample, encode, reconstruct, interpolate."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import List, Optional

import click
import numpy as np

from ..files import atomic_write
from ..inputs import figure4_keeps
from ..images import ImageReadError, find_images, image_size, load_images, make_grid, save_png
from ..manifest import load_manifest
from ..plots import kl_chart as kl_chart_image
from .base import MODEL_HELP, _load_model, model_info, _refuse_existing, main, model_options, parse_temperature, picture_options, user_errors


# ---------------------------------------------------------------------------------------------------- bpd
def _pick_auto_model(paths: List[Path], manifest: Optional[str]) -> tuple:
    sizes, unreadable = {}, []
    for p in paths:
        try:
            sizes[p] = image_size(p)
        except ImageReadError as e:
            unreadable.append((p, e.reason))
    distinct = set(sizes.values())
    if not distinct:
        return None, unreadable
    if len(distinct) > 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sorted(distinct)[:5])
        raise click.ClickException(f"images have mixed sizes ({listed}); choose a model with --model NAME and "
                                   "--resize center-crop")
    (w, h), = distinct
    man = load_manifest(manifest)
    entry = man.for_resolution(w) if w == h else None
    if entry is None:
        sizes = ", ".join(str(r) for r in sorted({e.resolution for e in man.entries}))
        raise click.ClickException(f"no released model works at {w}x{h} (they are {sizes}); pick one with "
                                   "--model NAME and --resize center-crop")
    return entry.name, unreadable


@main.command(epilog=MODEL_HELP)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--model", "model_name", default="auto", show_default=True,
              help="auto (the manifest's first model of the images' size: 32 cifar10, 64 imagenet64, 256 ffhq256, "
                   "1024 ffhq1024), a name, or a path.")
@model_options
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False), help="Per-image rows: .csv or .json.")
@click.option("--recursive/--no-recursive", default=True, show_default=True, help="Descend into sub-folders.")
@click.option("--resize", type=click.Choice(["none", "center-crop"]), default="none", show_default=True,
              help="center-crop: resize the short side and crop the centre; default never changes pixels.")
@click.option("--strict", is_flag=True, help="Exit non-zero if any file was skipped.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
@click.option("--seed", default=0, show_default=True, help="Seed of the posterior samples.")
@click.option("--samples", "n_samples", default=1, show_default=True, type=click.IntRange(min=1),
              help="Posterior draws per image; K > 1 adds the importance-weighted bound bpd_iw (tighter).")
@click.option("--kl-chart", default=None, type=click.Path(dir_okay=False),
              help="Write a PNG bar chart of the bits in each decoder layer (mean over the images).")
@user_errors
def bpd(paths, model_name, config, device, dtype, manifest, batch_size, output, recursive, resize, strict, overwrite,
        seed, n_samples, kl_chart):
    """Bits per dim (negative ELBO) of every image in PATHS (files and folders).

    Example: vdvae-zoo bpd photos/ --output scores.csv --samples 16 --kl-chart layers.png
    """
    import torch
    out_path = Path(output) if output else None
    if out_path and out_path.suffix.lower() not in (".csv", ".json"):
        raise click.BadParameter("must end in .csv or .json", param_hint="'--output'")
    _refuse_existing(kl_chart, out_path, overwrite=overwrite)
    files = find_images(paths, recursive=recursive)
    if not files:
        raise click.ClickException(f"no image files found in {', '.join(paths)}")
    skipped = []
    if model_name == "auto":
        model_name, skipped = _pick_auto_model(files, manifest)
        if model_name is None:
            for p, why in skipped:
                click.echo(f"warning: skipped {p}: {why}", err=True)
            raise click.ClickException(f"none of the {len(files)} files could be read as an image")
        click.echo(f"model: {model_name} (picked by image size; use --model to choose)", err=True)
        files = [f for f in files if f not in {p for p, _ in skipped}]
    model = _load_model(model_name, config, device, manifest, dtype)
    size = model.config.image_size
    rows, kl_sum, interrupted = [], None, False
    torch.manual_seed(seed)
    with click.progressbar(length=len(files), label="scoring", file=sys.stderr) as bar:
        try:
            for start in range(0, len(files), batch_size):
                chunk = files[start:start + batch_size]
                images, kept, bad = load_images(chunk, size=size, resize=None if resize == "none" else resize)
                skipped += bad
                if len(kept):
                    r = model.likelihood(images, n_samples=n_samples)
                    kl_sum = r.kl.sum(0) if kl_sum is None else kl_sum + r.kl.sum(0)
                    for i, p in enumerate(kept):
                        rows.append({"path": str(p), "bpd": r.bpd[i].item(),
                                     "distortion_bpd": r.distortion_bpd[i].item(), "rate_bpd": r.rate_bpd[i].item()})
                        if r.bpd_iw is not None:
                            rows[-1]["bpd_iw"] = r.bpd_iw[i].item()
                        click.echo(f"{rows[-1]['bpd']:.4f}  {p}")  # per image, as scored (stdout)
                bar.update(len(chunk))
        except KeyboardInterrupt:  # keep what was scored: write it, summarise, exit 130
            interrupted = True
    for p, why in skipped:
        click.echo(f"warning: skipped {p}: {why}", err=True)
    summary = {"images": len(rows), "skipped": len(skipped), **_mean("bpd", rows),
               **(_mean("bpd_iw", rows) if n_samples > 1 and rows else {}), "interrupted": interrupted}
    if rows and out_path:
        if out_path.suffix.lower() == ".json":
            options = {"model": model_name, "samples": n_samples, "seed": seed, "resize": resize, "dtype": dtype,
                       "batch_size": batch_size}
            text = json.dumps({"model": model_name, "options": options, "summary": summary,
                               "skipped": [{"path": str(p), "reason": why} for p, why in skipped], "images": rows},
                              indent=2) + "\n"
        else:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            text = buf.getvalue()
        atomic_write(out_path, text, overwrite=overwrite)
    click.echo(f"images: {len(rows)} scored, {len(skipped)} skipped" + (" (interrupted)" if interrupted else ""))
    for name in ("bpd", "bpd_iw"):
        if f"mean_{name}" in summary:
            what = name if name == "bpd" else f"{name} ({n_samples} samples)"
            err = summary[f"stderr_{name}"]
            click.echo(f"mean {what}: {summary[f'mean_{name}']:.4f} "
                       + (f"± {err:.4f} (standard error)" if err is not None else "(one image: no standard error)"))
    if rows and kl_chart:
        kl_chart_image(kl_sum / len(rows), model.layer_resolutions, kl_chart, overwrite=True,
                       title=f"bits per layer, mean of {len(rows)} images ({model_name})")
        click.echo(f"wrote {kl_chart}")
    click.echo(f"model: {model_name}")
    if interrupted:
        sys.exit(130)
    if not rows:
        raise click.ClickException("no image could be scored")
    if strict and skipped:
        raise click.ClickException(f"{len(skipped)} file(s) skipped and --strict was given")


def _mean(name: str, rows: List[dict]) -> dict:
    """{mean_NAME, stderr_NAME} over the rows; the standard error is None for one image (JSON-safe)."""
    if not rows:
        return {}
    values = np.array([r[name] for r in rows])
    stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return {f"mean_{name}": float(values.mean()), f"stderr_{name}": stderr}


# -------------------------------------------------------------------------------------------------- sample
@main.command(epilog=MODEL_HELP)
@click.argument("model_name", metavar="MODEL")
@click.option("-n", "--num", default=16, show_default=True, type=click.IntRange(min=1), help="Number of images.")
@click.option("-t", "--temperature", default="1.0", show_default=True,
              help="One number, one per layer (comma-separated), or resolution:t pairs such as 1:1.0,4:0.9,32:0.6.")
@click.option("--seed", default=None, type=int, help="Makes the samples reproducible (with --outdir: 0 when not given).")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False), help="A PNG grid.")
@click.option("--outdir", default=None, type=click.Path(file_okay=False),
              help="A sample set: 000000.png, 000001.png, ... and samples.json; image i depends only on (seed, i).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="Images per pass.")
@click.option("--resume", is_flag=True, help="With --outdir: keep the files there and draw only the missing ones.")
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
@model_options
@user_errors
def sample(model_name, num, temperature, seed, output, outdir, batch_size, resume, overwrite, config, device, dtype,
           manifest):
    """Draw images from the prior: a grid (-o), or a sample set of any size (--outdir), e.g. for FID.

    Example: vdvae-zoo sample ffhq256 -n 4 -t 0.8 --seed 0 -o faces.png

    Example: vdvae-zoo sample ffhq1024 --num 50000 -t 0.9 --outdir fid/ --batch-size 8   (Ctrl-C, then --resume)
    """
    import torch
    t = parse_temperature(temperature)
    if output and outdir:
        raise click.UsageError("give -o (a grid) or --outdir (one PNG per sample), not both")
    if outdir:
        return _sample_set(model_name, num, t, 0 if seed is None else seed, Path(outdir), batch_size, resume,
                           overwrite, config, device, dtype, manifest)
    output = output or "samples.png"
    _refuse_existing(output, overwrite=overwrite)
    model = _load_model(model_name, config, device, manifest, dtype)
    model.layer_temperatures(t)  # validate before the work
    if seed is not None:
        torch.manual_seed(seed)
    images = model.sample(num, temperature=t, batch_size=batch_size).numpy()
    save_png(make_grid(images, zoom=None), output)
    click.echo(f"wrote {output} ({num} samples)")


def _sample_set(model_name, num, t, seed, outdir: Path, batch_size, resume, overwrite, config, device, dtype, manifest):
    from huggingface_hub.utils import tqdm
    from .. import __version__
    from ..batching import image_seed
    existing = outdir.is_dir() and any(outdir.iterdir())
    if existing and not (resume or overwrite):
        raise click.ClickException(f"{outdir} is not empty; --resume continues the sample set in it, --overwrite "
                                   "replaces its files")
    model = _load_model(model_name, config, device, manifest, dtype)
    model.layer_temperatures(t)
    meta = {"model": model_info(model_name, manifest), "temperature": t, "seed": seed, "num": num,
            "image_size": model.config.image_size, "dtype": dtype, "vdvae_zoo": __version__,
            "seeds": "image i: vdvae_zoo.batching.image_seed(seed, i)"}
    meta_path = outdir / "samples.json"
    if resume and meta_path.is_file():
        before = json.loads(meta_path.read_text())
        differing = [k for k in ("model", "temperature", "seed", "dtype") if before.get(k) != meta[k]]
        if differing:
            raise click.ClickException(f"--resume: {outdir} holds samples of another run (differing: "
                                       f"{', '.join(differing)}); use another --outdir")
    atomic_write(meta_path, json.dumps(meta, indent=2) + "\n")
    names = [outdir / f"{i:06d}.png" for i in range(num)]
    todo = [i for i in range(num) if overwrite or not names[i].is_file()]  # files are written whole or not at all
    with tqdm(total=num, initial=num - len(todo), unit="img", desc="sampling") as bar:
        for start in range(0, len(todo), batch_size):
            part = todo[start:start + batch_size]
            images = model.sample(len(part), temperature=t, seeds=[image_seed(seed, i) for i in part]).numpy()
            for i, img in zip(part, images):
                save_png(img, names[i])
            bar.update(len(part))
    click.echo(f"wrote {len(todo)} PNGs to {outdir} ({num - len(todo)} were there already); see samples.json")


def _read_images_for(model, paths, resize: str):
    """Images of PATHS at the model's size; skipped files warned about one line each; none readable is an error."""
    images, kept, skipped = load_images(find_images(paths), size=model.config.image_size,
                                        resize=None if resize == "none" else resize)
    for p, why in skipped:
        click.echo(f"warning: skipped {p}: {why}", err=True)
    if not kept:
        raise click.ClickException(f"no image in {', '.join(map(str, paths))} could be read at "
                                   f"{model.config.image_size}x{model.config.image_size} (try --resize center-crop)")
    return images, kept


# --------------------------------------------------------------------------------------------------- encode
@main.command(epilog=MODEL_HELP)
@click.argument("model_name", metavar="MODEL")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="A .safetensors file.")
@click.option("--resize", type=click.Choice(["none", "center-crop"]), default="none", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True)
@model_options
@user_errors
def encode(model_name, paths, output, resize, seed, overwrite, config, device, dtype, manifest):
    """Posterior latents of images, saved as z.0 ... z.{L-1} with the image paths in the metadata.

    Example: vdvae-zoo encode ffhq256 faces/ -o latents.safetensors
    """
    import torch
    from safetensors.torch import save_file
    out = Path(output)
    _refuse_existing(out, overwrite=overwrite)
    model = _load_model(model_name, config, device, manifest, dtype)
    images, kept = _read_images_for(model, paths, resize)
    torch.manual_seed(seed)
    zs = model.encode(images)
    tensors = {f"z.{i}": z.contiguous() for i, z in enumerate(zs)}
    metadata = {"paths": json.dumps([str(p) for p in kept]), "model": str(model_name)}
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), overwrite=overwrite)
    click.echo(f"wrote {out}: {len(zs)} layers x {len(kept)} images")


# ----------------------------------------------------------------------------------------------- reconstruct
@main.command(epilog=MODEL_HELP)
@click.argument("model_name", metavar="MODEL")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--keep", default="auto", show_default=True,
              help="Numbers of layers to keep, comma-separated, 'all' for every layer; auto: the paper's 1,4,16,all "
                   "where the model has that many layers.")
@click.option("-t", "--temperature", default="0.1", show_default=True, help="Temperature of the layers not kept.")
@picture_options("reconstructions.png")
@model_options
@user_errors
def reconstruct(model_name, paths, keep, temperature, output, resize, seed, overwrite, config, device, dtype, manifest):
    """One row per image: the original, then reconstructions keeping the first k layers (the paper's Figure 4).

    Example: vdvae-zoo reconstruct ffhq256 face.png --keep 1,4,16,all -o fig4.png
    """
    import torch
    t = parse_temperature(temperature)
    _refuse_existing(output, overwrite=overwrite)
    model = _load_model(model_name, config, device, manifest, dtype)
    try:
        ks = figure4_keeps(model.num_layers) if keep.strip() == "auto" else \
            [model.num_layers if k.strip() == "all" else int(k) for k in keep.split(",")]
    except ValueError:
        raise click.BadParameter(f"{keep!r} must be comma-separated integers or 'all'", param_hint="'--keep'") from None
    images, kept = _read_images_for(model, paths, resize)
    torch.manual_seed(seed)
    rows = model.reconstruct(images, keep=ks, temperature=t).numpy()      # (N, len(ks), H, W, 3)
    grid = np.concatenate([images[:, None], rows], axis=1).reshape(-1, *images.shape[1:])
    save_png(make_grid(grid, ncols=len(ks) + 1, zoom=None), output)
    click.echo(f"wrote {output}: {len(kept)} rows, columns original + keep {', '.join(map(str, ks))}")


# ----------------------------------------------------------------------------------------------- interpolate
@main.command(epilog=MODEL_HELP)
@click.argument("model_name", metavar="MODEL")
@click.argument("image_a", type=click.Path(exists=True, dir_okay=False))
@click.argument("image_b", type=click.Path(exists=True, dir_okay=False))
@click.option("--steps", default=8, show_default=True, type=click.IntRange(min=2), help="Images on the path, ends included.")
@click.option("--keep", default="all", show_default=True, help="Layers to interpolate (the rest: prior, same noise).")
@click.option("-t", "--temperature", default="0.1", show_default=True, help="Temperature of the layers not kept.")
@click.option("--mode", type=click.Choice(["linear", "slerp"]), default="linear", show_default=True)
@picture_options("interpolation.png")
@model_options
@user_errors
def interpolate(model_name, image_a, image_b, steps, keep, temperature, mode, output, resize, seed, overwrite,
                config, device, dtype, manifest):
    """A row of images along the latent path from IMAGE_A to IMAGE_B.

    Example: vdvae-zoo interpolate ffhq256 a.png b.png --steps 8 --keep 20 -o path.png
    """
    import torch
    t = parse_temperature(temperature)
    _refuse_existing(output, overwrite=overwrite)
    model = _load_model(model_name, config, device, manifest, dtype)
    try:
        k = model.num_layers if keep.strip() == "all" else int(keep)
    except ValueError:
        raise click.BadParameter(f"{keep!r} must be an integer or 'all'", param_hint="'--keep'") from None
    images, kept = _read_images_for(model, [image_a, image_b], resize)
    if len(kept) != 2:
        raise click.ClickException("both IMAGE_A and IMAGE_B must be readable images")
    torch.manual_seed(seed)
    path = model.interpolate(images[0], images[1], steps, keep=k, temperature=t, mode=mode).numpy()
    save_png(make_grid(path, ncols=steps, zoom=None), output)
    click.echo(f"wrote {output}: {steps} steps from {kept[0]} to {kept[1]}, {k} of {model.num_layers} layers kept")
