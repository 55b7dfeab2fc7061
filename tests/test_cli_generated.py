"""A test generated from the command line itself (#35): every click command and parameter is walked, so a command
added later is covered without anyone writing its cases.

- Each numeric parameter gets NaN and one more of inf, -1, 0, 1e308; each path parameter (and MODEL, --config)
  gets a FIFO and one more of /dev/zero, a directory, a dangling symbolic link, a missing file. The second value
  is chosen by a stable hash of the command and parameter, so every run tries the same matrix.
- The cases run in one process per batch of commands, each case under a time bound (SIGALRM): a FIFO that is
  waited on, or a read that never ends, is a hang the bound reports instead of a suite that stops.
- Every case: no traceback, no hang. NaN, inf, 1e308 and every bad input path must end non-zero; -1, 0 and a
  missing output may also succeed. Nothing outside the case's own folder changes: the model, the images and the
  archive the cases read keep their bytes, and the checkout's files stay as they were.
"""

import hashlib
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from helpers import REPO, image_folder

from vdvae_zoo.cli import main
from vdvae_zoo.cli.params import Count, Real, RealOrAuto, TemperatureSchedule

BAD_NUMBERS = ["nan", "inf", "-1", "0", "1e308"]
NEVER_VALID_NUMBERS = {"nan", "inf", "1e308"}
BAD_PATHS = ["fifo", "devzero", "directory", "dangling", "missing"]
#: Parameters that name a file or folder a command writes (the others that take a path read it).
OUTPUTS = {"output", "outdir", "out", "kl_chart", "csv_path", "roc", "manifest_out", "cache_dir"}
#: String parameters that name something to read (a model, a checkpoint, a config file).
READS_A_NAME = {"model_name", "model", "checkpoint", "config"}
#: The few options a command needs to run at all on the fixtures, quickly (a command not listed gets its required
#: parameters from their names and types alone).
BASELINE = {
    "finetune": ["--config", "tiny32", "--steps", "1", "--batch-size", "2", "--val-every", "0", "--sample-every", "0"],
    "restore": ["--denoise", "5", "--steps", "1"],
    "publish": ["--dry-run"],
    "sample": ["-n", "2"],
    "eval": ["--limit", "2"],
    "ood": ["--limit", "2"],
    "interpolate": ["--steps", "2"],
    # a file that is not Inception's weights: every run that gets that far stops there, before any download
    "fid": ["--num", "2", "--inception-weights", "{not_inception}"],
}
EXTENSION = {"compress": ".vdz", "bpd": ".csv", "encode": ".npy", "ood": ".json", "eval": ".json"}
CASE_BOUND_S = 60


def numeric(param: click.Parameter) -> bool:
    return isinstance(param.type, (Real, Count, RealOrAuto, TemperatureSchedule, click.IntRange, click.FloatRange)) or (
        param.type in (click.INT, click.FLOAT)
    )


def path_like(param: click.Parameter) -> bool:
    return isinstance(param.type, click.Path) or param.name in READS_A_NAME


def pick(values: list[str], key: str) -> list[str]:
    """The worst value first, and one more chosen by a stable hash of `key`."""
    return [values[0], values[1 + zlib.crc32(key.encode()) % (len(values) - 1)]]


def flag(param: click.Option) -> str:
    return max(param.opts, key=len)


def baseline(name: str, command: click.Command) -> dict[str, list[str]]:
    """The parameter name -> the words that give it a working value: arguments in order, required options."""
    words: dict[str, list[str]] = {}
    for param in command.params:
        if not (param.required or isinstance(param, click.Argument)):
            continue
        n = param.name or ""
        if n in OUTPUTS:
            value = "{case}/out" + ("" if isinstance(param.type, click.Path) and not param.type.file_okay else
                                    EXTENSION.get(name, ".png"))  # fmt: skip
        elif n in ("model_name", "model"):
            value = "{model}"
        elif n in ("image", "image_a", "image_b"):
            value = "{image}"
        elif n == "checkpoint":
            value = "{weights}"
        elif n == "archive":
            value = "{archive}"
        elif n == "config":
            value = "tiny32"
        elif n == "names":
            value = "cifar10"
        elif n == "pairs":
            value = "tiny={weights}"
        elif n == "org":
            value = "org"
        else:  # paths, --data, --in, --ood: the images
            value = "{images}"
        words[n] = [value] if isinstance(param, click.Argument) else [flag(param), value]
    return words


def commands(group: click.Group = main, prefix: tuple = ()) -> list[tuple[str, click.Command]]:
    """Every command, sub-commands of groups included ("cache rm"), as (the words that call it, the command)."""
    found = []
    for name, command in sorted(group.commands.items()):
        found.append((" ".join(prefix + (name,)), command))
        if isinstance(command, click.Group):
            found += commands(command, prefix + (name,))
    return found


def cases() -> list[dict]:
    """Every command's cases: its baseline with one parameter given one bad value."""
    out = []
    for name, command in commands():
        base = baseline(name, command)
        for param in command.params:
            if not isinstance(param, (click.Option, click.Argument)) or getattr(param, "is_flag", False):
                continue
            if numeric(param):
                values, kind = pick(BAD_NUMBERS, f"{name}:{param.name}"), "number"
            elif path_like(param):
                values, kind = pick(BAD_PATHS, f"{name}:{param.name}"), "path"
            else:
                continue
            for value in values:
                words = {k: list(v) for k, v in base.items()}
                given = "{" + value + "}" if kind == "path" else value
                if isinstance(param, click.Argument):
                    words[param.name] = [given]
                else:
                    words[param.name] = [flag(param), given]
                argv = name.split() + [w for k, ws in words.items() if k in _argument_names(command) for w in ws]
                argv += [w for k, ws in words.items() if k not in _argument_names(command) for w in ws]
                argv += BASELINE.get(name, []) if param.name not in _baseline_names(name, command) else []
                output = param.name in OUTPUTS
                may_be_written = output and (value == "missing" or (value == "directory" and _dir_okay(param)))
                must_fail = (kind == "number" and value in NEVER_VALID_NUMBERS) or (
                    kind == "path" and not may_be_written
                )
                out.append({"argv": argv, "command": name, "param": param.name, "value": value,
                            "must_fail": must_fail})  # fmt: skip
    return out


def _dir_okay(param: click.Parameter) -> bool:
    return isinstance(param.type, click.Path) and bool(param.type.dir_okay)


def _argument_names(command: click.Command) -> list[str]:
    return [p.name for p in command.params if isinstance(p, click.Argument)]


def _baseline_names(name: str, command: click.Command) -> set[str]:
    opts = {o: p.name for p in command.params if isinstance(p, click.Option) for o in p.opts}
    return {opts[w] for w in BASELINE.get(name, []) if w in opts}


DRIVER = r"""
import json, os, signal, sys
from pathlib import Path
from click.testing import CliRunner
from vdvae_zoo.cli import main

class Hang(BaseException):
    pass

def alarm(signum, frame):
    raise Hang()

signal.signal(signal.SIGALRM, alarm)
cases, places, bound = json.loads(Path(sys.argv[1]).read_text()), json.loads(sys.argv[2]), int(sys.argv[3])
results = []
for i, case in enumerate(cases):
    folder = Path(sys.argv[4]) / f"case{i:03d}"
    folder.mkdir()
    os.mkfifo(folder / "fifo")  # the bad paths are the case's own: what one case writes no other sees
    (folder / "directory").mkdir()
    os.symlink(folder / "nothing-here", folder / "dangling")
    names = dict(places, case=str(folder), fifo=str(folder / "fifo"), directory=str(folder / "directory"),
                 dangling=str(folder / "dangling"), missing=str(folder / "missing.png"))
    argv = [a.format(**names) if "{" in a else a for a in case["argv"]]
    os.chdir(folder)
    signal.alarm(bound)
    try:
        result = CliRunner().invoke(main, argv, catch_exceptions=True)
        code, output = result.exit_code, result.output
        crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
        if crashed:
            output += f"\n{type(result.exception).__name__}: {result.exception}"
        hung = False
    except Hang:
        code, output, crashed, hung = None, "", False, True
    finally:
        signal.alarm(0)
    results.append(dict(case, argv=argv, code=code, crashed=crashed, hung=hung, output=output[-600:]))
print(json.dumps(results))
"""


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def _checkout_state() -> str:
    if not (REPO / ".git").exists():
        return ""
    return subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_generated")
    assert CliRunner().invoke(main, ["new", "tiny32", "-o", str(root / "model")]).exit_code == 0
    images = image_folder(root / "images", 6, size=32, seed=3)
    archive = root / "a.vdz"
    try:
        import constriction  # noqa: F401

        assert (
            CliRunner().invoke(main, ["compress", str(root / "model"), str(images), "-o", str(archive)]).exit_code == 0
        )
    except ImportError:
        archive.write_bytes(b"VDZ\x01 not an archive")
    (root / "not-inception.pth").write_text("not weights")
    return {
        "not_inception": str(root / "not-inception.pth"),
        "model": str(root / "model"),
        "weights": str(root / "model" / "model.safetensors"),
        "images": str(images),
        "image": str(images / "00.png"),
        "archive": str(archive),
        "devzero": "/dev/zero",
    }


def test_the_matrix_covers_every_command_and_its_parameters():
    """The walk reaches every command, and the kinds of parameter it tries are the ones each command has."""
    matrix = cases()
    walked = {c["command"] for c in matrix}
    with_values = {
        name
        for name, command in commands()
        if any(numeric(p) or path_like(p) for p in command.params if not getattr(p, "is_flag", False))
    }
    assert walked == with_values and len(main.commands) >= 16
    assert {"restore", "decompress", "eval", "finetune", "compress", "cache"} <= walked
    assert len(matrix) >= 150  # the note states the count the run gives
    assert all(c["value"] in BAD_NUMBERS + BAD_PATHS for c in matrix)


@pytest.mark.parametrize("part", [0, 1])
def test_every_command_refuses_bad_values_in_one_sentence(part, places, tmp_path):
    matrix = [c for i, c in enumerate(cases()) if i % 2 == part]
    fixtures = {k: _digest(Path(places[k])) for k in ("model", "images")}
    archive = Path(places["archive"]).read_bytes()
    checkout = _checkout_state()
    (tmp_path / "cases.json").write_text(json.dumps(matrix))
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HOME=str(tmp_path), WANDB_MODE="offline")
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path / "cases.json"), json.dumps(places), str(CASE_BOUND_S), str(work)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == len(matrix)
    wrong = []
    for r in results:
        said = f"{' '.join(r['argv'])} -> exit {r['code']}: {r['output'].strip()[-300:]}"
        if r["hung"]:
            wrong.append(f"HANG {said}")
        elif r["crashed"] or "Traceback" in r["output"]:
            wrong.append(f"TRACEBACK {said}")
        elif r["must_fail"] and r["code"] == 0:
            wrong.append(f"ACCEPTED {said}")
    assert not wrong, f"{len(wrong)} of {len(results)} cases:\n" + "\n".join(wrong)
    assert {k: _digest(Path(places[k])) for k in ("model", "images")} == fixtures
    assert Path(places["archive"]).read_bytes() == archive
    assert _checkout_state() == checkout  # nothing outside the test's folders changed
