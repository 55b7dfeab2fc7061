"""The `vdvae-zoo` group and what its commands share: one-line errors, model and picture options."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import click

from .._version import __version__
from ..data.files import refuse_existing
from ..factory import load
from ..model import EncoderMismatchError
from .params import SEED, TEMPERATURE, Count, Readable

#: What MODEL means, for every command that takes one (shown at the end of their --help).
MODEL_HELP = (
    "MODEL is a released name (see `vdvae-zoo list`), a folder with config.json + model.safetensors (what "
    "save_pretrained, a finetune run and `vdvae-zoo new` write), a .safetensors or original .th file (its "
    "architecture is recognised from its tensors, or give --config), or a Hub repository id owner/name. "
    "To try things without downloading: `vdvae-zoo new tiny32 -o tiny/`, then use tiny/ as MODEL."
)

_USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    KeyError,
    ConnectionError,
    EncoderMismatchError,
    ImportError,
    MemoryError,
)


def _one_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    text = text.strip() or type(e).__name__
    return text if len(text) <= 2000 else text[:2000] + "..."


def _system_error(e: OSError) -> str:
    """A file-system failure (read-only or unwritable folder, full disk) in one sentence that says what to do."""
    import errno

    where = e.filename or "the file being written (see the command's output)"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            f"cannot write {where}: {e.strerror or 'not writable'}. Choose a writable place: another output, "
            "or another cache with --cache-dir or HF_HOME=/a/writable/folder"
        )
    if e.errno == errno.ENOSPC:
        return (
            f"no space left on the device of {where}; nothing partial was kept. Free some space (the message "
            f"above says what was being written) or choose another folder, then run again"
        )
    if e.errno == errno.ENAMETOOLONG:
        return f"a name is too long for the file system: {str(where)[:120]}..."
    return f"{e.strerror or type(e).__name__}: {str(where)[:200]}"


def user_errors(fn):
    """Turn expected failures into a one-line `Error: ...` and exit status 1, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _USER_ERRORS as e:
            raise click.ClickException(_one_line(e)) from None
        except OSError as e:  # after the subclasses above (FileNotFoundError, ConnectionError, ...)
            raise click.ClickException(_system_error(e)) from None

    return wrapper


def parse_temperature(text: str):
    """'0.8' -> 0.8; '1.0,0.9,...' -> list (one per layer); '1:1.0,4:0.9' -> {resolution: t} (params.TEMPERATURE)."""
    return TEMPERATURE.convert(text, None, None)


def refuse_outputs(
    outputs: Sequence[str | None], overwrite: bool, inputs: Sequence[str] = (), option: str = "'-o'"
) -> None:
    """Before any work, the one check of the files a command writes: none may exist (unless --overwrite), and none
    may be one of the files it reads (an image inside an input folder included): --overwrite never replaces an
    input."""
    from ..data.images import find_images

    read: set[Path] = set()
    for p in inputs:
        if p and Path(p).exists():
            read |= {f.resolve() for f in find_images([p])} if Path(p).is_dir() else {Path(p).resolve()}
    for out in outputs:
        if not out:
            continue
        if Path(out).resolve() in read:
            raise click.BadParameter(
                f"{out} is one of the images or files this command reads; write it elsewhere (--overwrite never "
                "replaces an input)",
                param_hint=option,
            )
        refuse_existing(out, overwrite)


def load_model(model: str, config: str | None, device: str, manifest: str | None, dtype: str = "float32"):
    """MODEL as the commands' options name it (see MODEL_HELP)."""
    return load(model, config=config, device=None if device == "auto" else device, manifest=manifest, dtype=dtype)


def check_card_folder(card_folder: str | None, overwrite: bool) -> None:
    """Before any work, for --card: a model folder (config.json) whose README.md the result can be merged into."""
    from ..data.files import CARD_NAME, CONFIG_NAME
    from ..weights.cards import check_card

    if not card_folder:
        return
    if not (Path(card_folder) / CONFIG_NAME).is_file():
        raise click.BadParameter(
            f"{card_folder} is not a model folder (no {CONFIG_NAME}); give the folder whose README.md should carry "
            "the result",
            param_hint="'--card'",
        )
    check_card(Path(card_folder) / CARD_NAME, overwrite=overwrite)  # a card we would refuse, refused now


# Options that several commands share: each is stated once here.
card_option = click.option(
    "--card",
    "card_folder",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Also record the result in this model folder's card (README.md model-index: dataset, split, the "
    "numbers, seed, the command, the vdvae-zoo version); the Hub shows it. The result is merged into the card: "
    "every other line of README.md is kept. A README.md without front matter is changed only with --overwrite "
    "(front matter is added above its text).",
)
manifest_option = click.option(
    "--manifest",
    default=None,
    type=Readable(),
    help="Another weights manifest (a private zoo) instead of the shipped one.",
)
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace existing output files.")
batch_size_option = click.option(
    "--batch-size",
    default=None,
    type=Count(1, 65_536),
    help="Images per pass through the network (default: automatic for the device). "
    "Memory only: per-image results do not depend on it beyond float rounding.",
)
resize_option = click.option(
    "--resize",
    type=click.Choice(["none", "center-crop"]),
    default="none",
    show_default=True,
    help="center-crop: resize images of another size (short side, then the centre) instead "
    "of skipping them; the default never changes pixels.",
)


def model_options(fn):
    """MODEL's options: --device, --dtype, --config, --manifest."""
    fn = click.option(
        "--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:1"
    )(fn)
    fn = click.option(
        "--dtype",
        type=click.Choice(["float32", "bfloat16", "float16"]),
        default="float32",
        show_default=True,
        help="Compute precision of the convolutions (bfloat16: faster on GPUs and "
        "CPUs with bf16 units; the likelihood head stays float32).",
    )(fn)
    fn = click.option(
        "--config", default=None, help="Architecture of an original .th file: preset name or config.json."
    )(fn)
    return manifest_option(fn)


def picture_options(default_output: str):
    """The options of the commands that turn input images into one picture: --output, --resize, --seed, --overwrite."""

    def decorate(fn):
        fn = overwrite_option(fn)
        fn = click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the random draws.")(fn)
        fn = resize_option(fn)
        return click.option(
            "-o", "--output", default=default_output, show_default=True, type=click.Path(dir_okay=False)
        )(fn)

    return decorate


#: The signal that interrupted the command: SIGINT (Ctrl-C), or SIGTERM turned into a KeyboardInterrupt.
_interrupted_by = {"signal": 2}


def _terminate(signum, frame) -> None:
    """SIGTERM is handled as Ctrl-C is: what was done is kept and the command that continues is printed."""
    _interrupted_by["signal"] = signum
    raise KeyboardInterrupt


def interrupted_status() -> int:
    """The exit status of a command stopped by a signal: 128 + its number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + _interrupted_by["signal"]


def stop_interrupted(kept: str) -> None:
    """After Ctrl-C or SIGTERM: say what was kept and the command that continues, then exit with 128 + the
    signal's number (130, or 143 for SIGTERM; no "Aborted!")."""
    import sys

    click.echo(f"\ninterrupted: {kept}; continue with:\n  {resume_hint()}", err=True)
    sys.exit(interrupted_status())


def _arguments_as_run() -> list:
    """The arguments the running command was given (recorded by the group), or sys.argv's outside a command."""
    import sys

    ctx = click.get_current_context(silent=True)
    recorded = ctx.find_root().meta.get(_ARGV_KEY) if ctx is not None else None
    return list(sys.argv[1:] if recorded is None else recorded)


def command_as_run() -> str:
    """The command line exactly as it was run (`vdvae-zoo ARGS...`, shell-quoted): what a card or report records."""
    import shlex

    return shlex.join(["vdvae-zoo", *_arguments_as_run()])


def resume_hint(argv: list | None = None) -> str:
    """The command line that was run, with --resume added: what continues an interrupted run."""
    import shlex

    args = list(_arguments_as_run() if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    return "vdvae-zoo " + " ".join(shlex.quote(a) for a in args)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, `warning: ...`, on standard error (not Python's file:line: Category: form)."""
    click.echo(f"warning: {message}", err=True)


_ARGV_KEY = "vdvae_zoo.argv"


class _Group(click.Group):
    """The group that records the arguments it was given, so that a command can state itself as it was run."""

    def parse_args(self, ctx: click.Context, args: list) -> list:
        ctx.meta[_ARGV_KEY] = list(args)
        return super().parse_args(ctx, args)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vdvae-zoo")
@click.pass_context
def main(ctx: click.Context):
    """Very Deep VAEs: sample, score images in bits per dim, encode, reconstruct, fine-tune.

    Example: vdvae-zoo bpd my_images/
    """
    import signal
    import threading
    import warnings

    _interrupted_by["signal"] = signal.SIGINT  # each invocation starts afresh (a process may run several)

    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    ctx.call_on_close(lambda: setattr(warnings, "showwarning", previous))
    if threading.current_thread() is threading.main_thread():  # SIGTERM (schedulers send it) is handled as Ctrl-C
        before = signal.signal(signal.SIGTERM, _terminate)
        ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, before))
