"""The fid command: FID, KID and precision/recall of a model's samples (or of a sample set) through torch-fidelity."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..data.datasets import SPLITS
from ..data.files import atomic_write
from ..weights.cards import add_card_result
from .base import (
    MODEL_HELP,
    batch_size_option,
    card_option,
    check_card_folder,
    command_as_run,
    load_model,
    main,
    model_options,
    overwrite_option,
    refuse_outputs,
    resize_option,
    stop_interrupted,
    user_errors,
)
from .params import MAX_IMAGES, SEED, TEMPERATURE, TEMPERATURE_FORMS, Count, Folder, Readable


@main.command("fid", epilog=MODEL_HELP)
@click.argument("model_name", metavar="MODEL|SAMPLES_DIR")
@click.option(
    "--ref",
    required=True,
    type=Readable(dir_okay=True),
    help="Reference images: anything eval --data reads (a folder, the standard data files), a statistics file "
    "this command cached (.safetensors), or an .npz with mu and sigma (FID only).",
)
@click.option(
    "--split", type=click.Choice(SPLITS), default="test", show_default=True, help="The reference's split, as eval's."
)
@click.option(
    "--num",
    default=50_000,
    show_default=True,
    type=Count(2, MAX_IMAGES),
    help="Samples per temperature (FID's convention: 50,000; fewer gives a higher, noisier FID).",
)
@click.option(
    "-t",
    "--temperature",
    "temperatures",
    multiple=True,
    type=TEMPERATURE,
    help=f"Sampling temperature ({TEMPERATURE_FORMS}); several -t give the sweep (one row each; with -o, "
    "charts OUTPUT.png of FID and, with --kid, OUTPUT.kid.png). Default 1.",
)
@click.option("--seed", default=0, show_default=True, type=SEED, help="Image i is drawn from image_seed(seed, i).")
@click.option("--kid", is_flag=True, help="Also the kernel inception distance (subsets of min(1000, N)).")
@click.option("--prc", is_flag=True, help="Also precision and recall (on the same Inception features).")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False), help="Write the report as JSON.")
@card_option
@click.option(
    "--inception-weights",
    default=None,
    type=Readable(),
    help="torch-fidelity's Inception weights file (default: downloaded once into torch's hub cache).",
)
@click.option(
    "--cache-dir",
    default=None,
    type=Folder(),
    help="Where reference features are cached by content (default: $HF_HOME/hub/vdvae-zoo-fid, which "
    "`vdvae-zoo cache` lists and `cache rm fid-references` empties).",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its state file.")
@resize_option
@batch_size_option
@overwrite_option
@model_options
@user_errors
def fid_command(
    model_name,
    ref,
    split,
    num,
    temperatures,
    seed,
    kid,
    prc,
    output,
    card_folder,
    inception_weights,
    cache_dir,
    resume,
    resize,
    batch_size,
    overwrite,
    config,
    device,
    dtype,
    manifest,
):
    """FID of MODEL's samples against --ref, through torch-fidelity (pip install "vdvae-zoo[fid]").

    MODEL may be a sample set written by `sample --outdir` (SAMPLES_DIR): its images are scored as they are.
    The features of the samples drawn so far are kept in OUTPUT.state.safetensors (vdvae-zoo-fid.state.safetensors
    without -o): after Ctrl-C, the same command with --resume continues.

    Example: vdvae-zoo fid cifar10 --ref cifar-10-batches-py/ --split train -t 0.8 -t 0.9 -t 1.0 -o fid.json
    """
    from ..scoring.fid import fid
    from ..scoring.inception import FidError, _fidelity

    _fidelity()  # a missing extra is one sentence before any work
    chart = str(Path(output).with_suffix(".png")) if output and len(temperatures) > 1 else None
    kid_chart = str(Path(output).with_suffix(".kid.png")) if chart and kid else None
    refuse_outputs([output, chart, kid_chart], overwrite, inputs=[ref])
    check_card_folder(card_folder, overwrite)
    state = Path(f"{output or 'vdvae-zoo-fid'}.state.safetensors")
    if state.exists() and not (resume or overwrite):
        raise click.ClickException(f"{state} exists: --resume continues that run, --overwrite starts again")
    samples_dir = Path(model_name)
    from_folder = samples_dir.is_dir() and (samples_dir / "samples.json").is_file()
    if from_folder and temperatures:
        raise click.UsageError("a sample set's temperature is the one it was drawn at: drop -t")
    model = str(samples_dir) if from_folder else load_model(model_name, config, device, manifest, dtype)
    try:
        report = fid(
            model,
            ref,
            num=num,
            temperatures=list(temperatures) or [1.0],
            seed=seed,
            split=split,
            resize=None if resize == "none" else resize,
            kid=kid,
            prc=prc,
            batch_size=batch_size,
            inception_weights=inception_weights,
            cache_dir=cache_dir,
            state=state,
            resume=resume,
        )
    except KeyboardInterrupt:
        stop_interrupted(f"the samples' features so far are kept in {state}")
    except FidError as e:
        raise click.ClickException(str(e)) from None
    reference = report.reference
    click.echo(
        f"reference: {reference.get('path')} ({reference.get('images', '?')} images"
        + (", features from the cache" if reference.get("cached") else "")
        + f"); {report.num} samples per temperature, seed {report.seed}; {report.seconds:.0f} s"
    )
    for row in report.rows:
        parts = [f"T={row.temperature}", f"FID {row.fid:.3f}"]
        if row.kid_mean is not None:
            parts.append(f"KID {row.kid_mean:.5f} +- {row.kid_std:.5f}")
        if row.precision is not None:
            parts.append(f"precision {row.precision:.3f} recall {row.recall:.3f}")
        click.echo("  ".join(parts))
    if output:
        atomic_write(output, json.dumps(report.to_dict(), indent=2, default=str) + "\n", overwrite=True)
        click.echo(f"wrote {output}")
        if chart:
            report.chart(chart)
            click.echo(f"wrote {chart} (FID against temperature)")
        if kid_chart:
            report.chart(kid_chart, "kid_mean")
            click.echo(f"wrote {kid_chart} (KID against temperature)")
    if card_folder:
        lines = [] if from_folder else model.card_lines(model.config)
        card = None
        for result in report.card_results(command_as_run()):
            card = add_card_result(Path(card_folder), result, lines, overwrite=overwrite)
        click.echo(f"recorded the results in {card}")


@main.command("demo", epilog=MODEL_HELP)
@click.argument("model_name", metavar="MODEL")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", default=None, type=Count(1, 65535), help="Port (default: Gradio's first free one from 7860).")
@click.option("--share", is_flag=True, help="Also make a public gradio.live link (never without this flag).")
@model_options
@user_errors
def demo_command(model_name, host, port, share, config, device, dtype, manifest):
    """Serve a page to explore MODEL: sample, reconstruct, interpolate, restore, score (pip install
    "vdvae-zoo[demo]"). Ctrl-C stops it.

    Example: vdvae-zoo demo ffhq256 --port 7860
    """
    from ..demo import _gradio, launch

    _gradio()  # a missing extra is one sentence before the model loads
    model = load_model(model_name, config, device, manifest, dtype)
    where = f"on http://{host}:{port}" if port else f"on {host} (Gradio prints the address below)"
    click.echo(f"serving {model_name} {where}; Ctrl-C stops it", err=True)
    launch(model, host=host, port=port, share=share)
