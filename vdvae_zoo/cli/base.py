"""The `vdvae-zoo` group and what its commands share: one-line errors, model and picture options."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import click

from .. import __version__
from ..model import EncoderMismatchError, load

#: What MODEL means, for every command that takes one (shown at the end of their --help).
MODEL_HELP = ("MODEL is a released name (see `vdvae-zoo list`), a folder with config.json + model.safetensors (what "
              "save_pretrained, a finetune run and `vdvae-zoo new` write), a .safetensors or original .th file (its "
              "architecture is recognised from its tensors, or give --config), or a Hub repository id owner/name. "
              "To try things without downloading: `vdvae-zoo new tiny32 -o tiny/`, then use tiny/ as MODEL.")

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


def model_info(model: str, manifest: Optional[str]) -> dict:
    """Which weights MODEL named (call after loading it): its name and the sha256 of its model.safetensors (and of
    the original file it was converted from, when known), for reports and for checking a resume."""
    import json
    from .. import hub
    from ..files import sha256_file
    from ..manifest import load_manifest
    from ..weights import RUN_MODEL_FOLDER, WEIGHTS_NAME
    path = Path(model)
    info = {"name": model}
    if path.is_dir():
        weights = path / WEIGHTS_NAME if (path / WEIGHTS_NAME).is_file() else path / RUN_MODEL_FOLDER / WEIGHTS_NAME
    elif path.is_file():
        weights = path
    else:
        man = load_manifest(manifest)
        folder = hub.cached_folder(man.get(model)) if model in man else None
        weights = folder / WEIGHTS_NAME if folder else None
        if folder and (folder / "source.json").is_file():
            info["source_sha256"] = json.loads((folder / "source.json").read_text()).get("sha256")
        if model in man:
            info["paper_bpd"] = man.get(model).reported_test_bpd
    if weights is not None and weights.is_file():
        info["sha256"] = sha256_file(weights)
    return info


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
