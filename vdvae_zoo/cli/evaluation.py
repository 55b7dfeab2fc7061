"""The eval command: the paper's test-set numbers from the standard data files."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..data.datasets import SPLITS, files_dataset
from ..data.files import CONFIG_NAME, atomic_write, refuse_existing
from ..data.plots import kl_chart as kl_chart_image
from ..scoring.engine import (
    MAX_PRIOR_TEMPERATURE,
    ScoreOptions,
    model_for_images,
    printable_path,
    refuse_existing_state,
    score_dataset,
    write_scores,
)
from ..scoring.evaluate import evaluate
from ..weights.cards import add_card_result
from .base import (
    MODEL_HELP,
    batch_size_option,
    card_option,
    check_card_folder,
    command_as_run,
    interrupted_status,
    load_model,
    main,
    model_options,
    overwrite_option,
    refuse_outputs,
    resize_option,
    stop_interrupted,
    user_errors,
)
from .params import MAX_DRAWS, SEED, Count, Readable, Real


@main.command("eval", epilog=MODEL_HELP)
@click.argument("model_name", metavar="MODEL")
@click.option(
    "--data",
    required=True,
    type=Readable(dir_okay=True),
    help="cifar-10-batches-py/ or -bin/, imagenet{32,64}-valid.npy (or its folder), valid_32x32/, "
    "ffhq-256.npy, an FFHQ-1024 folder of PNGs, or any folder / .npy of images (docs/evaluate.md).",
)
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="test",
    show_default=True,
    help="Where the data defines one: the authors' split (docs/evaluate.md).",
)
@click.option("--limit", default=None, type=Count(1), help="A random subset of this many images (--seed).")
@click.option(
    "--samples",
    default=1,
    show_default=True,
    type=Count(1, MAX_DRAWS),
    help="Posterior draws per image; K > 1 adds the importance-weighted bound (tighter than the paper's).",
)
@click.option(
    "--seed", default=0, show_default=True, type=SEED, help="Seed of the posterior draws and of --limit's subset."
)
@batch_size_option
@click.option(
    "--chunk",
    default=256,
    show_default=True,
    type=Count(1, 1_000_000),
    help="Images per saved chunk (the unit of --resume and of sharing among processes).",
)
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False), help="Write the report as JSON.")
@click.option("--resume", is_flag=True, help="Continue an interrupted evaluation from its state file.")
@card_option
@overwrite_option
@model_options
@user_errors
def eval_command(
    model_name,
    data,
    split,
    limit,
    samples,
    seed,
    batch_size,
    chunk,
    output,
    resume,
    card_folder,
    overwrite,
    config,
    device,
    dtype,
    manifest,
):
    """Bits per dim of a data set's test split, next to the paper's number.

    Progress is kept in OUTPUT.state.jsonl (vdvae-zoo-eval.state.jsonl without -o): after Ctrl-C, the same
    command with --resume continues.

    Example: vdvae-zoo eval cifar10 --data cifar-10-batches-py/ -o cifar10-test.json

    Several processes: torchrun --nproc_per_node 8 -m vdvae_zoo eval cifar10 --data cifar-10-batches-py/
    """
    if output:
        refuse_existing(output, overwrite)
    check_card_folder(card_folder, overwrite)
    state = Path(f"{output or 'vdvae-zoo-eval'}.state.jsonl")
    refuse_existing_state(state, resume, overwrite)
    model = load_model(model_name, config, device, manifest, dtype)
    try:
        report = evaluate(
            model,
            data,
            split=split,
            limit=limit,
            samples=samples,
            seed=seed,
            batch_size=batch_size,
            chunk=chunk,
            state=state,
            resume=resume,
            overwrite=overwrite,
        )
    except KeyboardInterrupt:
        stop_interrupted(f"the finished chunks are kept in {state}")
    if report is None:  # not rank 0
        return
    for line in report.lines():
        click.echo(line)
    if output:
        atomic_write(output, report.to_json(), overwrite=True)
        click.echo(f"wrote {output}")
    if card_folder:
        card = add_card_result(
            Path(card_folder), report.card_result(command_as_run()), model.card_lines(model.config), overwrite=overwrite
        )
        click.echo(f"recorded the result in {card}")


@main.command("ood", epilog=MODEL_HELP)
@click.argument("model_name", metavar="MODEL")
@click.option(
    "--in",
    "in_data",
    required=True,
    type=Readable(dir_okay=True),
    help="The in-distribution data: anything --data of `eval` reads (a CIFAR-10 folder, an .npy, images).",
)
@click.option(
    "--ood",
    "ood_data",
    required=True,
    multiple=True,
    type=Readable(dir_okay=True),
    help="An out-of-distribution data set, read alike; repeat for several.",
)
@click.option(
    "-k",
    "ks",
    multiple=True,
    type=Count(0, 10_000),
    default=(1, 2),
    show_default=True,
    help="LLR>k: the k lowest decoder layers (the highest resolutions) come from their prior; repeat.",
)
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="test",
    show_default=True,
    help="Where the data defines one: the authors' split (docs/evaluate.md).",
)
@click.option("--limit", default=None, type=Count(1), help="A random subset of each set (--seed).")
@click.option(
    "--seed", default=0, show_default=True, type=SEED, help="Seed of the posterior draws and of --limit's subsets."
)
@click.option(
    "--prior-temperature",
    default=0.0,
    show_default=True,
    type=Real(0.0, MAX_PRIOR_TEMPERATURE),
    help="The replaced layers: 0 takes their conditional prior's mean (as Havtorn et al.), 1 a sample.",
)
@batch_size_option
@click.option(
    "--chunk",
    default=256,
    show_default=True,
    type=Count(1, 1_000_000),
    help="Images per saved chunk (the unit of --resume and of sharing among processes).",
)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The report, JSON.")
@click.option("--csv", "csv_path", default=None, type=click.Path(dir_okay=False), help="Per-image scores, CSV.")
@click.option("--roc", default=None, type=click.Path(dir_okay=False), help="ROC curves, PNG.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its state files.")
@overwrite_option
@model_options
@user_errors
def ood_command(
    model_name,
    in_data,
    ood_data,
    ks,
    split,
    limit,
    seed,
    prior_temperature,
    batch_size,
    chunk,
    output,
    csv_path,
    roc,
    resume,
    overwrite,
    config,
    device,
    dtype,
    manifest,
):
    """Out-of-distribution scores: the ELBO and Havtorn et al.'s likelihood ratios LLR>k (docs/ood.md), with
    AUROC, AUPRC and the FPR at 95% TPR for each OOD set (OOD is the positive class).

    Example: vdvae-zoo ood cifar10 --in cifar-10-batches-py/ --ood svhn-test.npy -k 1 -k 2 -o ood.json --roc roc.png
    """
    from ..data.plots import roc_chart
    from ..scoring.engine import write_scores
    from ..scoring.ood import evaluate_ood, roc_points

    outputs = [Path(p).resolve() for p in (output, csv_path, roc) if p]
    if len(set(outputs)) < len(outputs):
        raise click.UsageError("-o, --csv and --roc must be three different files")
    if csv_path and Path(csv_path).suffix.lower() != ".csv":
        raise click.BadParameter(f"{csv_path} must end in .csv", param_hint="'--csv'")
    if roc and Path(roc).suffix.lower() != ".png":
        raise click.BadParameter(f"{roc} must end in .png", param_hint="'--roc'")
    for path in (output, csv_path, roc):
        if path:
            refuse_existing(path, overwrite)
    state = Path(f"{output}.state")
    for j in range(1 + len(ood_data)):
        refuse_existing_state(f"{state}.{j}", resume, overwrite)
    model = load_model(model_name, config, device, manifest, dtype)
    try:
        report, tables = evaluate_ood(
            model,
            in_data,
            list(ood_data),
            tuple(dict.fromkeys(ks)),
            split=split,
            limit=limit,
            seed=seed,
            prior_temperature=prior_temperature,
            batch_size=batch_size,
            dtype=dtype,
            chunk=chunk,
            state=state,
            resume=resume,
            overwrite=overwrite,
        )
    except KeyboardInterrupt:
        stop_interrupted(f"the finished chunks are kept beside {output}")
    if report is None:  # not rank 0
        return
    for line in report.lines():
        click.echo(line)
    atomic_write(output, report.to_json(), overwrite=overwrite)
    click.echo(f"wrote {output}")
    if csv_path:
        write_scores(csv_path, report.per_image, {}, overwrite=overwrite)
        click.echo(f"wrote {csv_path}")
    if roc:
        roc_chart(roc_points(report, tables), roc, overwrite=overwrite)
        click.echo(f"wrote {roc}")


@main.command(epilog=MODEL_HELP)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--model",
    "model_name",
    default="auto",
    show_default=True,
    help="auto (the manifest's first model of the images' size: 32 cifar10, 64 imagenet64, 256 ffhq256, "
    "1024 ffhq1024), a name, or a path.",
)
@model_options
@batch_size_option
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False), help="Per-image rows: .csv or .json.")
@click.option("--recursive/--no-recursive", default=True, show_default=True, help="Descend into sub-folders.")
@resize_option
@click.option("--strict", is_flag=True, help="Exit non-zero if any file was skipped.")
@overwrite_option
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=SEED,
    help="Seed of the posterior draws: image i of PATHS draws with image_seed(seed, i), as in eval.",
)
@click.option(
    "--samples",
    "n_samples",
    default=1,
    show_default=True,
    type=Count(1, MAX_DRAWS),
    help="Posterior draws per image; K > 1 adds the importance-weighted bound bpd_iw (tighter).",
)
@click.option(
    "--kl-chart",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write a PNG bar chart of the bits in each decoder layer (mean over the images).",
)
@user_errors
def bpd(
    paths,
    model_name,
    config,
    device,
    dtype,
    manifest,
    batch_size,
    output,
    recursive,
    resize,
    strict,
    overwrite,
    seed,
    n_samples,
    kl_chart,
):
    """Bits per dim (negative ELBO) of every image in PATHS (files and folders).

    Each image's number depends only on the image, the model, --seed and --samples (scoring.py's seed rule):
    `vdvae-zoo eval MODEL --data FOLDER` with the same seed gives the same numbers.

    Example: vdvae-zoo bpd photos/ --output scores.csv --samples 16 --kl-chart layers.png
    """
    if output and Path(output).suffix.lower() not in (".csv", ".json"):
        raise click.BadParameter("must end in .csv or .json", param_hint="'--output'")
    refuse_outputs([output, kl_chart], overwrite, inputs=paths, option="'--output' / '--kl-chart'")
    _refuse_model_as_path(paths, manifest)
    dataset = files_dataset(paths, recursive=recursive)
    if model_name == "auto":
        model_name, unreadable = model_for_images(dataset.files, manifest)
        if model_name is None:
            for p, why in unreadable:
                click.echo(f"warning: skipped {printable_path(p)}: {why}", err=True)
            raise click.ClickException(f"none of the {len(dataset.files)} files could be read as an image")
        click.echo(f"model: {model_name} (picked by image size; use --model to choose)", err=True)
    model = load_model(model_name, config, device, manifest, dtype)
    options = ScoreOptions(seed=seed, samples=n_samples, batch_size=batch_size)

    def show(record):  # each skipped file once (stderr), then each image as it is scored (stdout)
        for i, why in record["skipped"]:
            click.echo(f"warning: skipped {printable_path(dataset.files[i])}: {why}", err=True)
        for i, value in zip(record["index"], record["bpd"], strict=False):
            click.echo(f"{value:.4f}  {printable_path(dataset.files[i])}")

    table = score_dataset(
        model,
        dataset,
        options,
        resize=None if resize == "none" else resize,
        on_chunk=show,
        keep_partial=True,
        desc="scoring",
    )
    summary = table.summary()
    if len(table) and output:
        about = {
            "model": model.provenance.to_dict(),
            "options": dict(options.record(), resize=resize),
            "summary": summary,
            "skipped": [{"path": printable_path(dataset.files[i]), "reason": why} for i, why in table.skipped],
        }
        write_scores(output, table.rows(dataset), about, overwrite=overwrite)
    click.echo(
        f"images: {len(table)} scored, {len(table.skipped)} skipped" + (" (interrupted)" if table.interrupted else "")
    )
    for name in ("bpd", "bpd_iw"):
        if f"mean_{name}" in summary:
            what = name if name == "bpd" else f"{name} ({n_samples} samples)"
            err = summary[f"stderr_{name}"]
            click.echo(
                f"mean {what}: {summary[f'mean_{name}']:.4f} "
                + (f"± {err:.4f} (standard error)" if err is not None else "(one image: no standard error)")
            )
    if len(table) and kl_chart:
        kl_chart_image(
            table.kl_sum_nats / len(table),
            model.layer_resolutions,
            kl_chart,
            overwrite=overwrite,
            title=f"bits per layer, mean of {len(table)} images ({model_name})",
        )
        click.echo(f"wrote {kl_chart}")
    click.echo(f"model: {model_name}")
    if table.interrupted:
        sys.exit(interrupted_status())
    if not len(table):
        raise click.ClickException("no image could be scored")
    if strict and table.skipped:
        raise click.ClickException(f"{len(table.skipped)} file(s) skipped and --strict was given")


def _refuse_model_as_path(paths, manifest) -> None:
    """`vdvae-zoo bpd cifar10 imgs/` (MODEL first, as the other commands take it): say how bpd names its model."""
    from ..weights.manifest import load_manifest

    first = Path(paths[0])
    is_name = not first.exists() and paths[0] in load_manifest(manifest)
    is_folder = len(paths) > 1 and (first / CONFIG_NAME).is_file()
    if is_name or is_folder:
        raise click.UsageError(
            f"{paths[0]} is a model, not images: bpd takes the model as an option. Did you mean "
            f"`vdvae-zoo bpd --model {paths[0]} {' '.join(paths[1:]) or 'IMAGES...'}`?"
        )


# -------------------------------------------------------------------------------------------------- sample
