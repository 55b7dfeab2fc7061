"""The eval command: the paper's test-set numbers from the standard data files."""

from __future__ import annotations

from pathlib import Path

import click

from ..data.datasets import SPLITS
from ..data.files import CARD_NAME, CONFIG_NAME, atomic_write, refuse_existing
from ..scoring.engine import MAX_PRIOR_TEMPERATURE, refuse_existing_state
from ..scoring.evaluate import evaluate
from ..weights.cards import add_card_result, check_card
from .base import (
    MODEL_HELP,
    batch_size_option,
    command_as_run,
    load_model,
    main,
    model_options,
    overwrite_option,
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
@click.option(
    "--card",
    "card_folder",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Also record the result in this model folder's card (README.md model-index: dataset, split, "
    "bits per dim, seed, the command, the vdvae-zoo version); the Hub shows it. The result is merged "
    "into the card: every other line of README.md is kept. A README.md without front matter is "
    "changed only with --overwrite (front matter is added above its text).",
)
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
    if card_folder and not (Path(card_folder) / CONFIG_NAME).is_file():
        raise click.BadParameter(
            f"{card_folder} is not a model folder (no {CONFIG_NAME}); give the folder whose "
            "README.md should carry the result",
            param_hint="'--card'",
        )
    if card_folder:
        check_card(Path(card_folder) / CARD_NAME, overwrite=overwrite)  # before any work: a card we would refuse
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
