"""The `vdvae-zoo` command line: a thin layer over the Python API (parsing and printing only)."""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import sys
from pathlib import Path
from typing import List, Optional

import click
import numpy as np

from . import __version__, hub
from .config import resolve_config
from .files import atomic_write, sha256_file
from .images import ImageReadError, find_images, image_size, load_images, make_grid, save_png
from .inspection import compare_with_config, inspect_checkpoint
from .manifest import load_manifest, manifest_data
from .model import VDVAE, EncoderMismatchError, load
from .plots import kl_chart as kl_chart_image
from .train import TrainOptions, finetune

_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError, ConnectionError, EncoderMismatchError)


def _one_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return text.strip() or type(e).__name__


def user_errors(fn):
    """Turn expected failures into a one-line `Error: ...` and exit status 1, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _USER_ERRORS as e:
            raise click.ClickException(_one_line(e)) from None

    return wrapper


def parse_temperature(text: str):
    """'0.8' -> 0.8; '1.0,0.9,...' -> list (one per layer); '1:1.0,4:0.9' -> {resolution: t}."""
    try:
        if ":" in text:
            return {int(k): float(v) for k, v in (item.split(":") for item in text.split(","))}
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a number, a comma-separated list of numbers (one per layer) "
                                 "or a list of resolution:temperature pairs", param_hint="'-t'") from None
    return values[0] if len(values) == 1 else values


def _refuse_existing(*paths, overwrite: bool) -> None:
    """Stop before any work when an output file exists and --overwrite was not given."""
    for path in paths:
        if path and Path(path).exists() and not overwrite:
            raise click.ClickException(f"{path} exists; pass --overwrite to replace it")


def _load_model(model: str, config: Optional[str], device: str, manifest: Optional[str], dtype: str = "float32"):
    return load(model, config=config, device=None if device == "auto" else device, manifest=manifest, dtype=dtype)


def model_options(fn):
    fn = click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:1")(fn)
    fn = click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32",
                      show_default=True, help="Compute precision of the convolutions (bfloat16: faster on GPUs and "
                      "CPUs with bf16 units; the likelihood head stays float32).")(fn)
    fn = click.option("--config", default=None, help="Architecture of an original .th file: preset name or config.json.")(fn)
    fn = click.option("--manifest", default=None, type=click.Path(dir_okay=False),
                      help="Another weights manifest (private zoos).")(fn)
    return fn


def picture_options(default_output: str):
    """The options of the commands that turn input images into one picture: --output, --resize, --seed, --overwrite."""
    def decorate(fn):
        fn = click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")(fn)
        fn = click.option("--seed", default=0, show_default=True)(fn)
        fn = click.option("--resize", type=click.Choice(["none", "center-crop"]), default="none", show_default=True,
                          help="center-crop: resize images of another size instead of skipping them.")(fn)
        return click.option("-o", "--output", default=default_output, show_default=True,
                            type=click.Path(dir_okay=False))(fn)
    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vdvae-zoo")
def main():
    """Very Deep VAEs: sample, score images in bits per dim, encode, reconstruct, fine-tune.

    Example: vdvae-zoo bpd my_images/
    """


# ------------------------------------------------------------------------------------------------- list/info
@main.command("list")
@click.option("--manifest", default=None, type=click.Path(dir_okay=False), help="Another weights manifest.")
@user_errors
def list_cmd(manifest):
    """The released models: resolution, bits, parameters, reported bpd, cached or not.

    Example: vdvae-zoo list
    """
    man = load_manifest(manifest)
    rows = [("name", "resolution", "bits", "parameters", "test bpd", "cached", "encoder")]
    for e in man.entries:
        cached = "yes" if hub.is_cached(e) else "no"
        names = e.name + (f" ({', '.join(e.aliases)})" if e.aliases else "")
        rows.append((names, f"{e.resolution}", f"{e.bits}", f"{e.parameters / 1e6:.1f}M",
                     f"{e.reported_test_bpd}", cached, "verified" if e.encoder_verified else "UNVERIFIED"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _cache_path(entry) -> Path:
    return hub.hub_repo_folder(entry.hub["repo_id"]) if entry.published else hub.converted_folder(entry)


@main.command()
@click.argument("model")
@click.option("--manifest", default=None, type=click.Path(dir_okay=False), help="Another weights manifest.")
@user_errors
def info(model, manifest):
    """A model's config, stochastic layers per resolution, and cache path.

    Example: vdvae-zoo info ffhq256
    """
    man = load_manifest(manifest)
    if model in man:
        entry = man.get(model)
        config = entry.resolve_config()
        click.echo(f"name: {entry.name}" + (f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""))
        click.echo(f"dataset: {entry.dataset}, {entry.resolution}x{entry.resolution}, {entry.bits}-bit targets")
        click.echo(f"parameters: {entry.parameters:,}; reported test bpd: {entry.reported_test_bpd}; licence: {entry.license}")
        click.echo(f"hub: {entry.hub['repo_id']}@{entry.hub.get('revision') or 'unpublished'}")
        click.echo(f"source: {entry.source.get('url')}")
        click.echo(f"encoder: {'verified' if entry.encoder_verified else 'UNVERIFIED'}" + (f" ({entry.notes})" if entry.notes else ""))
        click.echo(f"cache: {_cache_path(entry)} ({'cached' if hub.is_cached(entry) else 'not downloaded'})")
    else:
        path = Path(model)
        config = resolve_config(path / "config.json" if path.is_dir() else model)
    per_res = {}
    for b in config.decoder_blocks:
        per_res[b.resolution] = per_res.get(b.resolution, 0) + 1
    click.echo("stochastic layers per resolution: " + ", ".join(f"{r}: {n}" for r, n in per_res.items())
               + f" (total {config.num_layers})")
    click.echo("config: " + json.dumps(config.to_dict()))


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


@main.command()
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
    rows, kl_sum = [], None
    torch.manual_seed(seed)
    with click.progressbar(length=len(files), label="scoring", file=sys.stderr) as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            images, kept, bad = load_images(chunk, size=size, resize=None if resize == "none" else resize)
            skipped += bad
            if len(kept):
                r = model.likelihood(images, n_samples=n_samples)
                kl_sum = r.kl.sum(0) if kl_sum is None else kl_sum + r.kl.sum(0)
                for i, p in enumerate(kept):
                    rows.append({"path": str(p), "bpd": r.bpd[i].item(), "distortion_bpd": r.distortion_bpd[i].item(),
                                 "rate_bpd": r.rate_bpd[i].item()})
                    if r.bpd_iw is not None:
                        rows[-1]["bpd_iw"] = r.bpd_iw[i].item()
            bar.update(len(chunk))
    for p, why in skipped:
        click.echo(f"warning: skipped {p}: {why}", err=True)
    if rows and out_path:
        if out_path.suffix.lower() == ".json":
            text = json.dumps({"model": model_name, "images": rows}, indent=2) + "\n"
        else:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            text = buf.getvalue()
        atomic_write(out_path, text, overwrite=overwrite)
    values = np.array([r["bpd"] for r in rows])
    stderr = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    click.echo(f"images: {len(rows)} scored, {len(skipped)} skipped")
    if rows:
        click.echo(f"mean bpd: {values.mean():.4f} ± {stderr:.4f} (standard error)")
        if n_samples > 1:
            iw = np.array([r["bpd_iw"] for r in rows])
            iw_err = iw.std(ddof=1) / math.sqrt(len(iw)) if len(iw) > 1 else float("nan")
            click.echo(f"mean bpd_iw ({n_samples} samples): {iw.mean():.4f} ± {iw_err:.4f} (standard error)")
    if rows and kl_chart:
        kl_chart_image(kl_sum / len(rows), model.layer_resolutions, kl_chart, overwrite=True,
                       title=f"bits per layer, mean of {len(rows)} images ({model_name})")
        click.echo(f"wrote {kl_chart}")
    click.echo(f"model: {model_name}")
    if not rows:
        raise click.ClickException("no image could be scored")
    if strict and skipped:
        raise click.ClickException(f"{len(skipped)} file(s) skipped and --strict was given")


# -------------------------------------------------------------------------------------------------- sample
@main.command()
@click.argument("model_name", metavar="MODEL")
@click.option("-n", "--num", default=16, show_default=True, type=click.IntRange(min=1), help="Number of images.")
@click.option("-t", "--temperature", default="1.0", show_default=True,
              help="One number, one per layer (comma-separated), or resolution:t pairs such as 1:1.0,4:0.9,32:0.6.")
@click.option("--seed", default=None, type=int, help="Makes the samples reproducible.")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False), help="A PNG grid.")
@click.option("--outdir", default=None, type=click.Path(file_okay=False), help="One PNG per sample.")
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
@model_options
@user_errors
def sample(model_name, num, temperature, seed, output, outdir, overwrite, config, device, dtype, manifest):
    """Draw images from the prior.

    Example: vdvae-zoo sample ffhq256 -n 4 -t 0.8 --seed 0 -o faces.png
    """
    import torch
    t = parse_temperature(temperature)
    if not output and not outdir:
        output = "samples.png"
    targets = [Path(output)] if output else []
    if outdir:
        targets += [Path(outdir) / f"sample_{i:04d}.png" for i in range(num)]
    _refuse_existing(*targets, overwrite=overwrite)
    model = _load_model(model_name, config, device, manifest, dtype)
    model.layer_temperatures(t)  # validate before the work
    if seed is not None:
        torch.manual_seed(seed)
    images = model.sample(num, temperature=t).numpy()
    if output:
        save_png(make_grid(images), output)
        click.echo(f"wrote {output} ({num} samples)")
    if outdir:
        for i, img in enumerate(images):
            save_png(img, Path(outdir) / f"sample_{i:04d}.png")
        click.echo(f"wrote {num} PNGs to {outdir}")


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
@main.command()
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
@main.command()
@click.argument("model_name", metavar="MODEL")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--keep", default="1,4,16,all", show_default=True, help="Numbers of layers to keep, comma-separated.")
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
        ks = [model.num_layers if k.strip() == "all" else int(k) for k in keep.split(",")]
    except ValueError:
        raise click.BadParameter(f"{keep!r} must be comma-separated integers or 'all'", param_hint="'--keep'") from None
    images, kept = _read_images_for(model, paths, resize)
    torch.manual_seed(seed)
    rows = model.reconstruct(images, keep=ks, temperature=t).numpy()      # (N, len(ks), H, W, 3)
    grid = np.concatenate([images[:, None], rows], axis=1).reshape(-1, *images.shape[1:])
    save_png(make_grid(grid, ncols=len(ks) + 1), output)
    click.echo(f"wrote {output}: {len(kept)} rows, columns original + keep {', '.join(map(str, ks))}")


# ----------------------------------------------------------------------------------------------- interpolate
@main.command()
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
    save_png(make_grid(path, ncols=steps), output)
    click.echo(f"wrote {output}: {steps} steps from {kept[0]} to {kept[1]}, {k} of {model.num_layers} layers kept")


# ----------------------------------------------------------------------------------------- weights tooling
@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--config", default=None, help="Compare with this preset or config.json.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def inspect(checkpoint, config, as_json):
    """The architecture a checkpoint's tensor shapes determine (.th or .safetensors).

    Example: vdvae-zoo inspect ffhq1024-iter-1700000-model-ema.th --config ffhq1024
    """
    info_ = inspect_checkpoint(checkpoint)
    diffs = compare_with_config(info_, resolve_config(config)) if config else None
    if as_json:
        d = info_.to_dict()
        if diffs is not None:
            d["differences"] = diffs
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(info_.describe())
    if diffs is not None:
        click.echo(f"compared with {config}: " + ("shapes agree" if not diffs else "DIFFERENT"))
        for d in diffs:
            click.echo(f"  {d}")


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--config", required=True, help="Preset name or config.json the file was trained with.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output folder.")
@user_errors
def convert(checkpoint, config, output, overwrite):
    """Convert an original .th into config.json + model.safetensors (+ model card).

    Example: vdvae-zoo convert ffhq256-iter-1700000-model-ema.th --config ffhq256 -o ffhq256/
    """
    folder = VDVAE.convert_original(checkpoint, config, output, overwrite=overwrite)
    click.echo(f"wrote {folder} (sha256 of model.safetensors: {sha256_file(Path(folder) / 'model.safetensors')})")


@main.command("download")
@click.argument("names", nargs=-1, required=True)
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False), help="Instead of HF_HOME's cache.")
@click.option("--revision", default=None)
@click.option("--manifest", default=None, type=click.Path(dir_okay=False))
@user_errors
def download_cmd(names, cache_dir, revision, manifest):
    """Fetch models into the cache for offline use (HF_HUB_OFFLINE=1 later).

    Example: vdvae-zoo download ffhq256 cifar10
    """
    for name in names:
        folder = VDVAE.download(name, revision=revision, cache_dir=cache_dir, manifest=manifest)
        click.echo(f"{name}: {folder}")


@main.command()
@click.argument("pairs", nargs=-1, required=True, metavar="NAME=FILE.th...")
@click.option("--org", required=True, help="Hub namespace, e.g. vdvae-zoo.")
@click.option("--manifest-out", default=None, type=click.Path(dir_okay=False),
              help="Write an updated manifest here (default: print the fields to pin).")
@click.option("--dry-run", is_flag=True, help="Convert and hash, but upload nothing.")
@click.option("--manifest", default=None, type=click.Path(dir_okay=False), help="The manifest to update.")
@user_errors
def publish(pairs, org, manifest_out, dry_run, manifest):
    """Maintainers: convert original files, upload them to the Hub, print the manifest fields to pin.

    Example: vdvae-zoo publish ffhq256=ffhq256-iter-1700000-model-ema.th --org vdvae-zoo
    """
    import tempfile
    man = load_manifest(manifest)
    pins = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} must be NAME=FILE.th", param_hint="NAME=FILE.th")
        name, path = pair.split("=", 1)
        entry = man.get(name)
        with tempfile.TemporaryDirectory() as tmp:
            folder = VDVAE.convert_original(path, entry.resolve_config(), Path(tmp) / "model", entry=entry)
            sha = sha256_file(folder / "model.safetensors")
            source_sha = sha256_file(path)
            if dry_run:
                pins[entry.name] = {"repo_id": f"{org}/{entry.name}", "revision": None, "sha256": sha,
                                    "source_sha256": source_sha}
            else:
                model = load(folder, device="cpu")
                pin = model.push_to_hub(f"{org}/{entry.name}", entry=entry)
                pins[entry.name] = dict(pin, source_sha256=source_sha)
    if manifest_out:
        base = manifest_data(manifest)
        for m in base["models"]:
            if m["name"] in pins:
                pin = pins[m["name"]]
                m["hub"].update(repo_id=pin["repo_id"], revision=pin["revision"], sha256=pin["sha256"])
                m["source"]["sha256"] = pin["source_sha256"]
        atomic_write(manifest_out, json.dumps(base, indent=2) + "\n")
        click.echo(f"wrote {manifest_out}")
    click.echo(json.dumps(pins, indent=2))


# ------------------------------------------------------------------------------------------------ finetune
def _train_options(fn):
    """The finetune command's options, one per TrainOptions field (their one statement: names, defaults, help)."""
    for f in reversed(dataclasses.fields(TrainOptions)):
        meta, name = f.metadata, "--" + f.name.replace("_", "-")
        kind, required = meta.get("type"), bool(meta.get("required"))
        if isinstance(f.default, bool):
            fn = click.option(name, is_flag=True, help=meta["help"])(fn)
            continue
        if "choices" in meta:
            type_ = click.Choice(meta["choices"])
        elif kind in ("existing", "path"):
            type_ = click.Path(exists=kind == "existing")
        elif "min" in meta or "max" in meta:
            range_type = click.IntRange if kind is int else click.FloatRange
            type_ = range_type(min=meta.get("min"), max=meta.get("max"))
        else:
            type_ = kind
        fn = click.option(name, f.name, type=type_, required=required, default=f.default,
                          show_default=f.default is not None, help=meta["help"])(fn)
    return fn


@main.command("finetune")
@_train_options
@user_errors
def finetune_command(**options):
    """Fine-tune a released model, or train from scratch, on a folder of images.

    Example: vdvae-zoo finetune --model ffhq256 --data faces/ --out runs/faces --steps 20000

    Multi-GPU: torchrun --nproc_per_node 8 -m vdvae_zoo finetune --model ffhq256 --data faces/ --out runs/faces
    """
    summary = finetune(**options)
    click.echo(json.dumps(summary))
    if summary.get("stopped_by_signal"):
        sys.exit(130)


if __name__ == "__main__":
    main()
