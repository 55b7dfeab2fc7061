"""Commands about models and weight files: list, info, inspect, convert, download, publish."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .._version import __version__
from ..config import OUTPUTS, resolve_config
from ..data.files import CARD_NAME, CONFIG_NAME, MODEL_SUBFOLDER, WEIGHTS_NAME, atomic_write, refuse_existing
from ..factory import load
from ..model import VDVAE
from ..training.run_folder import RunFolder
from ..weights import hub
from ..weights.cards import card_results
from ..weights.inspection import compare_with_config, inspect_checkpoint
from ..weights.manifest import load_manifest, manifest_data, pin_entries
from ..weights.original import read_checkpoint
from ..weights.provenance import named_provenance
from .base import MODEL_HELP, main, manifest_option, overwrite_option, user_errors
from .params import SEED, Folder, Readable


# ------------------------------------------------------------------------------------------------- list/info
@main.command("list")
@manifest_option
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
        rows.append(
            (
                names,
                f"{e.resolution}",
                f"{e.bits}",
                f"{e.parameters / 1e6:.1f}M",
                f"{e.reported_test_bpd}",
                cached,
                "verified" if e.encoder_verified else "UNVERIFIED",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())


def _cache_path(entry) -> Path:
    return hub.hub_repo_folder(entry.hub["repo_id"]) if entry.published else hub.converted_folder(entry)


@main.command(epilog=MODEL_HELP)
@click.argument("model")
@manifest_option
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
        click.echo(
            f"parameters: {entry.parameters:,}; reported test bpd: {entry.reported_test_bpd}; licence: {entry.license}"
        )
        click.echo(f"hub: {entry.hub['repo_id']}@{entry.hub.get('revision') or 'unpublished'}")
        click.echo(f"source: {entry.source.get('url')}")
        click.echo(
            f"encoder: {'verified' if entry.encoder_verified else 'UNVERIFIED'}"
            + (f" ({entry.notes})" if entry.notes else "")
        )
        click.echo(f"cache: {_cache_path(entry)} ({'cached' if hub.is_cached(entry) else 'not downloaded'})")
        config = _found_architecture(entry) or config
    elif Path(model).exists():
        for line in RunFolder(model, writer=False).describe() if Path(model).is_dir() else []:
            click.echo(line)
        config = VDVAE.config_of(model, manifest)
    else:
        config = resolve_config(model)  # a preset name
    per_res = {}
    for b in config.decoder_blocks:
        per_res[b.resolution] = per_res.get(b.resolution, 0) + 1
    click.echo(
        "stochastic layers per resolution: "
        + ", ".join(f"{r}: {n}" for r, n in per_res.items())
        + f" (total {config.num_layers})"
    )
    click.echo("config: " + json.dumps(config.to_dict()))


@main.command()
@click.argument("config")
@click.option("-o", "--output", required=True, type=Folder(), help="Folder to write.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the random initialisation.")
@click.option(
    "--image-channels",
    type=click.IntRange(1, 4),
    default=None,
    help="1 grey, 2 grey + alpha, 3 RGB, 4 RGBA (default: the config's, 3 for every preset).",
)
@click.option(
    "--output-distribution",
    type=click.Choice(OUTPUTS),
    default=None,
    help="dmol: the paper's mixture of logistics; bernoulli: binary images (pixels 0 or 255).",
)
@overwrite_option
@user_errors
def new(config, output, seed, image_channels, output_distribution, overwrite):
    """A model with the paper's random initialisation, saved as a folder that every command takes as MODEL.

    CONFIG is a preset (cifar10, imagenet32, imagenet64, ffhq256, ffhq1024), an example config (tiny32: 32x32,
    139k parameters, trains on a CPU in minutes) or a config.json (docs/config.md).

    Example: vdvae-zoo new tiny32 -o tiny/ && vdvae-zoo sample tiny/ -n 16 -o noise.png
    """
    import dataclasses

    import torch

    resolved = resolve_config(config)
    changes = {k: v for k, v in (("image_channels", image_channels), ("output", output_distribution)) if v is not None}
    resolved = dataclasses.replace(resolved, **changes) if changes else resolved
    torch.manual_seed(seed)
    folder = VDVAE(resolved).save_pretrained(output, overwrite=overwrite)
    click.echo(
        f"wrote {folder}: a random-init {config} model, {resolved.num_layers} stochastic "
        f"layers, {resolved.image_size}x{resolved.image_size}x{resolved.image_channels}"
        + (f", {resolved.output} output" if resolved.output != "dmol" else "")
    )


def _found_architecture(entry):
    """Print which architecture the entry's file holds (read off the cached copy) and return its config; before
    a download, say that it is not yet known and which ones it may be."""
    folder = hub.cached_folder(entry)
    if folder is None:
        labels = list(entry.architectures())
        maybe = f"; the file may hold: {', '.join(labels)}" if len(labels) > 1 else ""
        click.echo(f"architecture: not yet known (not downloaded){maybe}")
        return None
    provenance = named_provenance(entry, folder)
    click.echo(
        f"architecture: {provenance.architecture} (read off the downloaded file)"
        + (f"; source sha256 {provenance.source_sha256}" if provenance.source_sha256 else "")
    )
    return resolve_config(folder / CONFIG_NAME)


# ----------------------------------------------------------------------------------------- weights tooling
@main.command()
@click.argument("checkpoint", metavar="FILE_OR_NAME")
@click.option("--config", default=None, help="Compare with this preset or config.json (a folder's own by default).")
@click.option("--download", is_flag=True, help="FILE_OR_NAME is a model name: fetch its file, then report on it.")
@manifest_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def inspect(checkpoint, config, download, manifest, as_json):
    """The architecture a checkpoint's tensor shapes determine (.th, .safetensors, or a model folder), and which
    known architectures (presets, example configs, manifest entries and their candidates) it matches exactly.

    Example: vdvae-zoo inspect ffhq1024-iter-1700000-model-ema.th --config ffhq1024

    With internet: vdvae-zoo inspect ffhq1024 --download   (prints the line to send us, see README)
    """
    if download:
        model = load(checkpoint, device="cpu", manifest=manifest)
        found, provenance = model.config, model.provenance
        sha = provenance.source_sha256 or provenance.sha256
        click.echo(
            f"{provenance.entry}: architecture {provenance.architecture}; "
            f"{'source' if provenance.source_sha256 else WEIGHTS_NAME} sha256 {sha}; "
            f"{found.image_size}x{found.image_size}, {found.num_layers} stochastic layers, "
            f"{len(found.encoder_blocks)} encoder blocks, vdvae-zoo {__version__}"
        )
        checkpoint = provenance.weights
    elif Path(checkpoint).is_dir():  # a model folder (or a training run's): its weights, and its config to compare
        folder = Path(checkpoint)
        if not (folder / WEIGHTS_NAME).is_file() and (folder / MODEL_SUBFOLDER / WEIGHTS_NAME).is_file():
            folder = folder / MODEL_SUBFOLDER
        if not (folder / WEIGHTS_NAME).is_file():
            raise click.BadParameter(f"{checkpoint} is a folder without {WEIGHTS_NAME}", param_hint="FILE_OR_NAME")
        config = config or (str(folder / CONFIG_NAME) if (folder / CONFIG_NAME).is_file() else None)
        checkpoint = str(folder / WEIGHTS_NAME)
    elif not Path(checkpoint).is_file():
        raise click.BadParameter(
            f"{checkpoint} is not a file or a model folder (for a model name, add --download)",
            param_hint="FILE_OR_NAME",
        )
    state = read_checkpoint(checkpoint)
    info_ = inspect_checkpoint(state)
    match = VDVAE.identify(state, manifest)
    diffs = compare_with_config(info_, resolve_config(config)) if config else None
    if as_json:
        d = info_.to_dict()
        d["matches"] = [labels for labels, _ in match.exact]
        if diffs is not None:
            d["differences"] = diffs
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(info_.describe())
    if match.exact:
        click.echo("matches exactly: " + "; ".join(" = ".join(labels) for labels, _ in match.exact))
    elif match.closest is not None:
        click.echo(f"matches no known architecture; the closest is {match.closest[0]}: {match.closest[1].summary(4)}")
    if diffs is not None:
        click.echo(f"compared with {config}: " + ("shapes agree" if not diffs else "DIFFERENT"))
        for d in diffs:
            click.echo(f"  {d}")


@main.command()
@click.argument("checkpoint", type=Readable())
@click.option(
    "--config",
    default=None,
    help="Preset name or config.json the file was trained with (default: recognised from its tensors).",
)
@click.option("-o", "--output", required=True, type=Folder(), help="Folder to write.")
@overwrite_option
@manifest_option
@user_errors
def convert(checkpoint, config, output, overwrite, manifest):
    """Convert an original .th into config.json + model.safetensors (+ model card).

    Example: vdvae-zoo convert ffhq256-iter-1700000-model-ema.th --config ffhq256 -o ffhq256/
    """
    folder = VDVAE.convert_original(checkpoint, config, output, overwrite=overwrite, manifest=manifest)
    click.echo(f"wrote {folder} (sha256 of {WEIGHTS_NAME}: {hub.file_sha256(Path(folder) / WEIGHTS_NAME)})")


@main.command("download")
@click.argument("names", nargs=-1, required=True)
@click.option("--cache-dir", default=None, type=Folder(), help="Instead of HF_HOME's cache.")
@click.option("--revision", default=None)
@manifest_option
@user_errors
def download_cmd(names, cache_dir, revision, manifest):
    """Fetch models into the cache for offline use (HF_HUB_OFFLINE=1 later).

    Example: vdvae-zoo download ffhq256 cifar10
    """
    for name in names:
        folder = VDVAE.download(name, revision=revision, cache_dir=cache_dir, manifest=manifest)
        click.echo(f"{name}: {folder}")


_cache_dir_option = click.option("--cache-dir", default=None, type=Folder(), help="Instead of HF_HOME's cache.")


@main.group("cache", invoke_without_command=True)
@_cache_dir_option
@manifest_option
@click.pass_context
@user_errors
def cache_group(ctx, cache_dir, manifest):
    """The models vdvae-zoo keeps in the cache, with their sizes (`vdvae-zoo cache rm NAME` removes one).

    Converted weights live in $HF_HOME/hub/vdvae-zoo/NAME, which huggingface_hub's cache tools do not see.

    Example: vdvae-zoo cache && vdvae-zoo cache rm ffhq1024
    """
    ctx.obj = {"cache_dir": cache_dir, "manifest": manifest}
    if ctx.invoked_subcommand is not None:
        return
    from ..weights.cache import cached_models

    held = cached_models(load_manifest(manifest), cache_dir)
    click.echo(f"cache: {hub._root(cache_dir)}")
    for m in held:
        click.echo(f"{m.name:<20} {m.kind:<10} {m.size / 2**20:10.1f} MiB  {m.path}")
    total = sum(m.size for m in held)
    click.echo(f"{len(held)} models, {total / 2**20:.1f} MiB" if held else "no models cached")
    from ..scoring.inception import CACHE_NAME, reference_cache_dir

    features = sorted(reference_cache_dir(cache_dir).glob("reference-*.safetensors"))
    if features:
        size = sum(f.stat().st_size for f in features)
        click.echo(
            f"{CACHE_NAME:<20} {'fid':<10} {size / 2**20:10.1f} MiB  {reference_cache_dir(cache_dir)} "
            f"({len(features)} reference feature files of vdvae-zoo fid)"
        )


@cache_group.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
@user_errors
def cache_rm(obj, names):
    """Remove models from the cache (they are downloaded again when next loaded); `fid-references` removes the
    reference features vdvae-zoo fid cached (extracted again when next needed).

    Example: vdvae-zoo cache rm ffhq1024
    """
    import shutil

    from ..scoring.inception import CACHE_NAME, reference_cache_dir
    from ..weights.cache import remove_cached

    for name in names:
        if name == CACHE_NAME:  # the reference features of vdvae-zoo fid (made again when next needed)
            folder = reference_cache_dir(obj["cache_dir"])
            if not folder.is_dir():
                raise click.ClickException(f"{folder} holds no FID reference features")
            shutil.rmtree(folder)
            click.echo(f"removed {CACHE_NAME}: {folder}")
            continue
        for m in remove_cached(name, load_manifest(obj["manifest"]), obj["cache_dir"]):
            click.echo(f"removed {m.name} ({m.kind}, {m.size / 2**20:.1f} MiB): {m.path}")


@main.command()
@click.argument("pairs", nargs=-1, required=True, metavar="NAME=FILE.th...")
@click.option("--org", required=True, help="Hub namespace, e.g. vdvae-zoo.")
@click.option(
    "--manifest-out",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write an updated manifest here (default: print the fields to pin).",
)
@click.option("--dry-run", is_flag=True, help="Convert and hash, but upload nothing.")
@click.option(
    "--results-from",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="A model folder whose card's measured results (written by `eval --card`) the published cards "
    "carry; the paper's numbers are added as quoted, whatever this holds.",
)
@manifest_option
@overwrite_option
@user_errors
def publish(pairs, org, manifest_out, dry_run, results_from, manifest, overwrite):
    """Maintainers: convert original files, upload them to the Hub, print the manifest fields to pin.

    Example: vdvae-zoo publish ffhq256=ffhq256-iter-1700000-model-ema.th --org vdvae-zoo
    """
    import tempfile

    man = load_manifest(manifest)
    if manifest_out:
        refuse_existing(manifest_out, overwrite)
    pins = {}
    results = card_results(Path(results_from) / CARD_NAME) if results_from else []
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} must be NAME=FILE.th", param_hint="NAME=FILE.th")
        name, path = pair.split("=", 1)
        entry = man.get(name)
        with tempfile.TemporaryDirectory() as tmp:
            folder = VDVAE.convert_original(path, None, Path(tmp) / "model", entry=entry)
            if dry_run:
                pin = {
                    "repo_id": f"{org}/{entry.name}",
                    "revision": None,
                    "sha256": hub.file_sha256(folder / WEIGHTS_NAME),
                }
            else:
                pin = load(folder, device="cpu").push_to_hub(f"{org}/{entry.name}", entry=entry, results=results)
            pins[entry.name] = dict(pin, source_sha256=hub.file_sha256(path))
    if manifest_out:
        atomic_write(
            manifest_out, json.dumps(pin_entries(manifest_data(manifest), pins), indent=2) + "\n", overwrite=overwrite
        )
        click.echo(f"wrote {manifest_out}")
    click.echo(json.dumps(pins, indent=2))
