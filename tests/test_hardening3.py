"""A newcomer's hour, round 3: the data-loss cases, the FIFO hang and the rest of the adversarial list."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import image_folder

from vdvae_zoo.cli import main
from vdvae_zoo.data.files import atomic_folder, atomic_write, read_small_text, staged_file


@pytest.fixture()
def model_and_images(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["new", "tiny32", "-o", str(tmp_path / "m")]).exit_code == 0
    return tmp_path / "m", image_folder(tmp_path / "imgs", 3, size=32, seed=4)


# ------------------------------------------------------------------------------------------- data loss
def test_encode_never_writes_through_a_planted_link(tmp_path, model_and_images):
    """A symbolic link planted at the temporary names a writer used to use (predictable: `.X.partial`,
    `.X.tmp-PID`) is never followed: the user's file behind it keeps its bytes."""
    model, images = model_and_images
    victim = tmp_path / "precious.txt"
    victim.write_text("the user's data")
    out = tmp_path / "x.npy"
    for name in (f".{out.name}.partial", f".{out.name}.tmp-{os.getpid()}", f".{out.name}.json.tmp-{os.getpid()}"):
        (tmp_path / name).symlink_to(victim)
    result = CliRunner().invoke(main, ["encode", str(model), str(images), "-o", str(out), "--flat", "2"])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "the user's data"
    assert np.load(out).shape[0] == 3


def test_staged_temporaries_are_created_exclusively(tmp_path, monkeypatch):
    """The temporary is made with O_EXCL: when its name is taken (here forced by a fixed random sequence), the
    writer picks another name or fails; it never opens what is there."""
    import tempfile

    victim = tmp_path / "victim"
    victim.write_text("keep")

    class Fixed:
        def __iter__(self):
            return self

        def __next__(self):
            return "fixed"

    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: Fixed())
    target = tmp_path / "out.bin"
    (tmp_path / f".out.bin.tmp-{os.getpid()}-fixed").symlink_to(victim)
    with pytest.raises(FileExistsError):
        atomic_write(target, b"new")
    assert victim.read_text() == "keep" and not target.exists()


def test_encode_checks_every_output_before_work(tmp_path, model_and_images, monkeypatch):
    model, images = model_and_images
    out = tmp_path / "x.npy"
    side = tmp_path / "x.npy.json"
    side.write_text("mine")
    import vdvae_zoo.cli.pictures as pictures

    loaded = []
    monkeypatch.setattr(pictures, "load_model", lambda *a, **k: loaded.append(a) or pytest.fail("loaded"))
    result = CliRunner().invoke(main, ["encode", str(model), str(images), "-o", str(out), "--flat", "2"])
    assert result.exit_code != 0 and "x.npy.json exists" in result.output and "--overwrite" in result.output
    assert side.read_text() == "mine" and not out.exists() and not loaded


def test_encode_output_rule(tmp_path, model_and_images):
    """One rule: --flat writes rows instead of the per-layer tensors; --stats adds mean and std in the same form;
    an .npy holds one array (so it needs --flat and refuses --stats)."""
    from safetensors import safe_open

    model, images = model_and_images
    runner = CliRunner()

    def keys(*args):
        out = tmp_path / f"z{len(list(tmp_path.glob('z*')))}.safetensors"
        result = runner.invoke(main, ["encode", str(model), str(images), "-o", str(out), *args])
        assert result.exit_code == 0, result.output
        with safe_open(str(out), "pt") as f:
            return set(f.keys())

    per_layer = keys()
    assert per_layer and all(k.startswith("z.") for k in per_layer)
    assert keys("--stats") == per_layer | {k.replace("z.", "mean.") for k in per_layer} | {
        k.replace("z.", "std.") for k in per_layer
    }
    assert keys("--flat", "3") == {"flat"}
    assert keys("--flat", "3", "--stats") == {"flat", "flat_mean", "flat_std"}
    refused = runner.invoke(
        main, ["encode", str(model), str(images), "-o", str(tmp_path / "a.npy"), "--flat", "3", "--stats"]
    )
    assert refused.exit_code == 2 and "--stats" in refused.output and not (tmp_path / "a.npy").exists()


def test_a_fifo_config_is_refused_not_waited_on(tmp_path):
    """A model folder whose config.json is a FIFO used to block forever (API and CLI)."""
    assert CliRunner().invoke(main, ["new", "tiny32", "-o", str(tmp_path / "m")]).exit_code == 0
    (tmp_path / "m" / "config.json").unlink()
    os.mkfifo(tmp_path / "m" / "config.json")
    code = (
        "import vdvae_zoo, sys\n"
        "try:\n    vdvae_zoo.load(sys.argv[1], device='cpu')\n"
        "except ValueError as e:\n    print(e)\n"
    )
    api = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True, timeout=120)
    assert "not a regular file" in api.stdout, api.stdout + api.stderr
    cli = subprocess.run(
        [sys.executable, "-m", "vdvae_zoo", "info", str(tmp_path / "m")], capture_output=True, text=True, timeout=120
    )
    assert cli.returncode == 1 and "not a regular file" in cli.stderr and "config.json" in cli.stderr


def test_read_small_text_refuses_what_is_not_a_file(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ValueError, match="not a regular file"):
        read_small_text(tmp_path / "pipe")
    (tmp_path / "big").write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match="more than"):
        read_small_text(tmp_path / "big", max_bytes=10)
    assert read_small_text(tmp_path / "big") == "x" * 100


def test_staged_folders_and_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "f") as staging:
            (staging / "a").write_text("x")
        with staged_file(tmp_path / "g") as tmp:
            tmp.write_text("y")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "f").st_mode & 0o777) == 0o755
    assert (os.stat(tmp_path / "g").st_mode & 0o777) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "g"]


# ------------------------------------------------------------------------------------------- what a card says
@pytest.fixture()
def crops32(tmp_path):
    return image_folder(tmp_path / "crops", 10, size=32, seed=11)


def test_the_card_states_what_the_run_printed_last(tmp_path, crops32):
    runner = CliRunner()
    assert runner.invoke(main, ["new", "tiny32", "-o", str(tmp_path / "tiny")]).exit_code == 0
    args = [
        "finetune",
        "--model",
        str(tmp_path / "tiny"),
        "--data",
        str(crops32),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--val-every",
        "2",
        "--sample-every",
        "0",
        "--val-fraction",
        "0.2",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    printed = result.output.split("validation bpd ")[1].split()[0]
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert f"validation bits per dim: {printed}" in card
    front = card.split("---")[1]
    assert "base_model" not in front  # a local path is no Hub id
    assert "(a local path, not on the Hub)" in card and str(tmp_path / "tiny") in card
    # resumed to more steps: the card follows the new final number
    resumed = runner.invoke(main, args[:8] + ["5"] + args[9:] + ["--resume"])
    assert resumed.exit_code == 0, resumed.output
    again = resumed.output.split("validation bpd ")[1].split()[0]
    assert f"validation bits per dim: {again}" in (tmp_path / "run" / "model" / "README.md").read_text()
    info = runner.invoke(main, ["info", str(tmp_path / "run")])
    assert info.exit_code == 0, info.output
    assert f"base model: {tmp_path / 'tiny'}" in info.output and "steps: 5\n" in info.output
    assert f"last validation bpd: {again} at step 5" in info.output and "sha256" in info.output


def test_a_hub_base_model_goes_into_the_front_matter(tmp_path, crops32):
    from vdvae_zoo import VDVAEConfig
    from vdvae_zoo.weights.cards import model_card
    from vdvae_zoo.weights.manifest import hub_id_of as _hub_id_of
    from vdvae_zoo.weights.manifest import load_manifest

    assert _hub_id_of("owner/some-model", None) == "owner/some-model"
    assert _hub_id_of(str(crops32), None) is None
    assert _hub_id_of("cifar10", None) == load_manifest().get("cifar10").hub["repo_id"]
    card = model_card(VDVAEConfig.from_preset("cifar10"), [], run={"base_model": "owner/some-model"})
    assert "base_model: owner/some-model" in card.split("---")[1]


def test_a_run_stopped_by_a_signal_logs_it(tmp_path, crops32, monkeypatch):
    import signal

    from vdvae_zoo.training.trainer import Trainer, TrainOptions

    trainer = Trainer(
        TrainOptions(
            data=str(crops32),
            out=str(tmp_path / "run"),
            config="tiny32",
            steps=10,
            batch_size=2,
            val_every=0,
            sample_every=0,
        )
    )
    original = trainer.train_step

    def step():
        record = original()
        if trainer.step == 2:
            trainer._on_signal(signal.SIGINT, None)
        return record

    monkeypatch.setattr(trainer, "train_step", step)
    with pytest.raises(KeyboardInterrupt):  # saved, then SIGINT goes on to Python's own handler (#35: never swallowed)
        trainer.train()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the trainer's handler is gone
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "stopped" and records[-1]["stopped_by_signal"] == signal.SIGINT
    assert records[-1]["step"] == 2


def test_sigterm_is_handled_as_ctrl_c(tmp_path):
    """`sample --outdir` killed by SIGTERM keeps its finished images and prints the command that continues."""
    import signal
    import time

    assert CliRunner().invoke(main, ["new", "tiny32", "-o", str(tmp_path / "m")]).exit_code == 0
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vdvae_zoo",
            "sample",
            str(tmp_path / "m"),
            "-n",
            "100000",
            "--outdir",
            str(tmp_path / "s"),
            "--batch-size",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "s").glob("*.png"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "interrupted: the finished images are kept" in err and "--resume" in err


# --------------------------------------------------------------------------------------------- one grammar
def test_bpd_with_a_model_name_first_says_how(tmp_path, model_and_images):
    model, images = model_and_images
    result = CliRunner().invoke(main, ["bpd", "cifar10", str(images)])
    assert result.exit_code == 2 and "did you mean `vdvae-zoo bpd --model cifar10" in result.output.lower()
    result = CliRunner().invoke(main, ["bpd", str(model), str(images)])
    assert result.exit_code == 2 and f"--model {model}" in result.output


def test_a_mistyped_local_path_is_not_a_connection_error():
    import vdvae_zoo

    for typo in ("tiyn/", "a/ b", "./nothing/here"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            vdvae_zoo.load(typo)


def test_load_states_its_options():
    import inspect

    import vdvae_zoo

    parameters = inspect.signature(vdvae_zoo.load).parameters
    assert {"device", "local_files_only", "cache_dir", "config", "revision"} <= set(parameters)
    assert not any(p.kind is p.VAR_KEYWORD for p in parameters.values())


# ------------------------------------------------------------------------------------------- readable output
def test_piped_output_holds_results_and_skips_come_first(tmp_path, model_and_images):
    model, images = model_and_images
    (images / "broken.png").write_bytes(b"no")
    result = subprocess.run(
        [sys.executable, "-m", "vdvae_zoo", "bpd", "--model", str(model), str(images)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "%|" not in result.stdout and "%|" not in result.stderr  # no bar: stderr is not a terminal
    lines = result.stdout.splitlines()
    assert len([line for line in lines if line.endswith(".png") and "broken" not in line]) == 3
    assert "warning: skipped" in result.stderr and "broken.png" in result.stderr


# ------------------------------------------------------------------------------------ the adversarial list
def test_ood_refuses_a_temperature_that_makes_scores_meaningless(tmp_path, model_and_images):
    model, images = model_and_images
    result = CliRunner().invoke(
        main,
        [
            "ood",
            str(model),
            "--in",
            str(images),
            "--ood",
            str(images),
            "--prior-temperature",
            "1e308",
            "-o",
            str(tmp_path / "o.json"),
        ],
    )
    assert result.exit_code == 2 and not (tmp_path / "o.json").exists()
    from vdvae_zoo.scoring.ood import detection_metrics

    with pytest.raises(ValueError, match="not finite"):
        detection_metrics([1.0, float("nan")], [2.0])


def test_ood_checks_its_outputs_before_scoring(tmp_path, model_and_images):
    model, images = model_and_images
    same = CliRunner().invoke(
        main,
        [
            "ood",
            str(model),
            "--in",
            str(images),
            "--ood",
            str(images),
            "-o",
            str(tmp_path / "x.json"),
            "--roc",
            str(tmp_path / "x.json"),
        ],
    )
    assert same.exit_code == 2 and "different files" in same.output
    csv = CliRunner().invoke(
        main,
        [
            "ood",
            str(model),
            "--in",
            str(images),
            "--ood",
            str(images),
            "-o",
            str(tmp_path / "y.json"),
            "--csv",
            str(tmp_path / "y.txt"),
        ],
    )
    assert csv.exit_code == 2 and "must end in .csv" in csv.output and "scoring" not in csv.output


@pytest.mark.parametrize("bad", [float("nan"), -5.0])
def test_state_files_with_impossible_scores_are_refused(tmp_path, model_and_images, bad, monkeypatch):
    import vdvae_zoo
    from vdvae_zoo.data.datasets import files_dataset
    from vdvae_zoo.scoring.engine import ScoreOptions, StateError, score_dataset

    model_dir, images = model_and_images
    model = vdvae_zoo.load(model_dir, device="cpu")
    state = tmp_path / "s.jsonl"
    dataset = files_dataset([images])
    _interrupted_run(monkeypatch, model, dataset, ScoreOptions(), state)
    lines = state.read_text().splitlines()
    record = json.loads(lines[1])
    record["bpd"][0] = bad
    state.write_text("\n".join([lines[0], json.dumps(record)] + lines[2:]) + "\n")
    with pytest.raises(StateError, match="finite|negative"):
        score_dataset(model, dataset, ScoreOptions(), chunk=2, state=state, resume=True, progress=False)


def _interrupted_run(monkeypatch, model, dataset, options, state):
    """Score with chunks of 2 and a Ctrl-C at the second chunk: the state file keeps the first."""
    from helpers import interrupt_call

    import vdvae_zoo.scoring.engine as scoring

    interrupt_call(monkeypatch, scoring, "_score_chunk", 2)
    with pytest.raises(KeyboardInterrupt):
        scoring.score_dataset(model, dataset, options, chunk=2, state=state, progress=False)
    assert len(state.read_text().splitlines()) == 2


def test_resuming_with_another_batch_size_keeps_the_runs_pass_size(tmp_path, model_and_images, monkeypatch):
    import vdvae_zoo
    from vdvae_zoo.data.datasets import files_dataset
    from vdvae_zoo.scoring.engine import ScoreOptions, StateError, score_dataset

    model_dir, images = model_and_images
    model = vdvae_zoo.load(model_dir, device="cpu")
    dataset = files_dataset([images])
    whole = score_dataset(model, dataset, ScoreOptions(batch_size=2), chunk=2, progress=False)
    state = tmp_path / "s.jsonl"
    _interrupted_run(monkeypatch, model, dataset, ScoreOptions(batch_size=2), state)
    with pytest.raises(StateError, match="--seed 0 -> 1"):
        score_dataset(
            model, dataset, ScoreOptions(batch_size=2, seed=1), chunk=2, state=state, resume=True, progress=False
        )
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="the run's pass size \\(2 images per pass\\)"):
        resumed = score_dataset(
            model, dataset, ScoreOptions(batch_size=4), chunk=2, state=state, resume=True, progress=False
        )
    assert np.allclose(resumed.columns["bpd"], whole.columns["bpd"])


def test_a_huge_model_type_is_not_echoed_whole(tmp_path):
    from vdvae_zoo.weights.registry import UnknownModelTypeError, family

    with pytest.raises(UnknownModelTypeError) as info:
        family("x" * 1_000_000)
    assert len(str(info.value)) < 500 and "1,000,000 characters" in str(info.value)


@pytest.mark.parametrize("name", [None, 123, ""])
def test_hubconf_refuses_a_name_that_is_not_one(name):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("hubconf", Path(__file__).resolve().parents[1] / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    with pytest.raises(ValueError, match="name must be"):
        hubconf.vdvae(name)


def test_compress_refuses_to_write_over_its_own_input(tmp_path, model_and_images):
    pytest.importorskip("constriction")
    model, images = model_and_images
    target = images / "00.png"
    before = target.read_bytes()
    result = CliRunner().invoke(main, ["compress", str(model), str(images), "-o", str(target), "--overwrite"])
    assert result.exit_code == 2 and "one of the images" in result.output
    assert target.read_bytes() == before


def test_a_weights_file_rewritten_in_place_is_hashed_again(tmp_path):
    from vdvae_zoo.weights.hub import file_sha256

    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 1000)
    first = file_sha256(path)
    info = os.stat(path)
    with open(path, "r+b") as f:  # same size, then the old modification time put back
        f.write(b"b")
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == info.st_mtime_ns
    assert file_sha256(path) != first


def test_a_full_disk_while_saving_a_checkpoint_is_one_sentence_and_keeps_the_old_one(tmp_path, crops32, monkeypatch):
    import safetensors.torch

    runner = CliRunner()
    args = [
        "finetune",
        "--config",
        "tiny32",
        "--data",
        str(crops32),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--val-every",
        "0",
        "--sample-every",
        "0",
        "--save-every",
        "1",
    ]
    assert runner.invoke(main, args).exit_code == 0
    saved = (tmp_path / "run" / "checkpoint" / "state.safetensors").read_bytes()
    real = safetensors.torch.save_file

    def full(tensors, filename, metadata=None):
        if "checkpoint" in str(filename) or "state" in str(filename):
            raise RuntimeError(
                "Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                '"No space left on device" })'
            )
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    result = runner.invoke(main, args[:8] + ["4"] + args[9:] + ["--resume"])
    assert result.exit_code == 1 and "no space left" in result.output.lower()
    assert "Traceback" not in result.output and result.output.lower().count("no space left") == 1
    assert (tmp_path / "run" / "checkpoint" / "state.safetensors").read_bytes() == saved


def test_the_readme_quick_start_runs_in_seconds_and_says_true_shapes(tmp_path, monkeypatch):
    """README's quick start is what a newcomer runs first: it must run as written, and its comments must hold."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Quick start\n\n```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, "README.md quick start", "exec"), namespace)
    assert len(namespace["zs"]) == 13 and namespace["zs"][0].shape[1] == 8
    assert namespace["elbo"].kl.shape == (2, 13) and (tmp_path / "bits_per_layer.png").is_file()


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS"])
def test_a_full_or_read_only_local_disk_is_not_called_a_broken_download(tmp_path, monkeypatch, code):
    """The Hub download's local write failing is the disk's fault: said as such (with the folder), not retried
    and not reported as "broke off twice ... try again later"."""
    import errno

    import huggingface_hub

    from vdvae_zoo.cli.base import _system_error
    from vdvae_zoo.weights import hub

    calls = []

    def full(*args, **kwargs):
        calls.append(1)
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", full)
    with pytest.raises(OSError) as info:
        hub._hub_download("owner/model", "model.safetensors", "main", tmp_path, False)
    assert not isinstance(info.value, ConnectionError) and len(calls) == 1
    assert info.value.filename == str(tmp_path)
    sentence = _system_error(info.value)
    assert str(tmp_path) in sentence and "try again later" not in sentence
