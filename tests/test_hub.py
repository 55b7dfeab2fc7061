"""Loading by name (fake Hub and fake source server on 127.0.0.1), from folders and files, and the manifest."""

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

import vdvae_zoo
from vdvae_zoo import IntegrityError, UnknownModelError
from vdvae_zoo.files import sha256_file
from vdvae_zoo.manifest import Manifest, load_manifest

from helpers import REPO, TINY
from fakehub import FakeHub, FileServer


@pytest.fixture()
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return home


@pytest.fixture()
def golden_config(golden_expected):
    return golden_expected["config"] | golden_expected["preprocess"]


@pytest.fixture()
def golden_files(tmp_path, golden_model):
    folder = golden_model.save_pretrained(tmp_path / "export")
    return {n: (folder / n).read_bytes() for n in ("config.json", "model.safetensors")}


@pytest.fixture()
def hub(monkeypatch):
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.close()


@pytest.fixture()
def source():
    server = FileServer({"tiny32-model-ema.th": (TINY / "model-ema.th").read_bytes()})
    yield server
    server.close()


def write_manifest(path: Path, entries):
    path.write_text(json.dumps({"models": entries}))
    return path


def entry(name, golden_config, *, repo_id="test-org/tiny32", revision=None, sha256=None, url=None, source_sha=None):
    return {"name": name, "preset": "cifar10", "config": golden_config, "dataset": "golden", "resolution": 32,
            "bits": 8, "parameters": 135078, "reported_test_bpd": None, "license": "MIT",
            "hub": {"repo_id": repo_id, "revision": revision, "filenames": ["config.json", "model.safetensors"],
                    "sha256": sha256},
            "source": {"url": url, "sha256": source_sha}}


def assert_golden_likelihood(model, golden_expected, golden_images):
    torch.manual_seed(golden_expected["likelihood"]["seed_set_before"])
    elbo = model.likelihood(golden_images).neg_elbo.numpy()
    np.testing.assert_allclose(elbo, golden_expected["likelihood"]["elbo_nats_per_dim"], rtol=1e-4)


# --------------------------------------------------------------------------------------------- by name, Hub
def test_load_by_name_from_the_hub_with_pinned_sha(tmp_path, hf_home, hub, golden_files, golden_config,
                                                   golden_expected, golden_images):
    commit = hub.add("test-org/tiny32", golden_files)
    sha = hashlib.sha256(golden_files["model.safetensors"]).hexdigest()
    manifest = write_manifest(tmp_path / "m.json", [entry("tiny", golden_config, revision=commit, sha256=sha)])
    model = vdvae_zoo.load("tiny", manifest=manifest, device="cpu")
    assert_golden_likelihood(model, golden_expected, golden_images)
    assert any(hf_home.rglob("model.safetensors")), "downloaded into HF_HOME"

    # Offline afterwards: from the cache only, with the server gone.
    hub.close()
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        again = vdvae_zoo.load("tiny", manifest=manifest, device="cpu")
    finally:
        del os.environ["HF_HUB_OFFLINE"]
    assert_golden_likelihood(again, golden_expected, golden_images)
    assert vdvae_zoo.load("tiny", manifest=manifest, local_files_only=True) is not None


def test_revision_pinning_and_override(tmp_path, hf_home, hub, golden_files, golden_config, golden_model):
    first = hub.add("test-org/tiny32", golden_files)
    zeroed = type(golden_model)(golden_model.config)
    for p in zeroed.parameters():
        torch.nn.init.zeros_(p)
    folder = zeroed.save_pretrained(tmp_path / "zeroed")
    second = hub.add("test-org/tiny32", {n: (folder / n).read_bytes() for n in golden_files})
    assert first != second
    # An unpublished entry (no sha256 to pin): the revision comes from `revision=`.
    manifest = write_manifest(tmp_path / "m.json", [entry("tiny", golden_config, url="http://127.0.0.1:9/unused")])
    pinned = vdvae_zoo.load("tiny", manifest=manifest, revision=first, device="cpu")
    latest = vdvae_zoo.load("tiny", manifest=manifest, revision=second, device="cpu")
    w = "decoder.out_net.out_conv.weight"
    assert torch.equal(pinned.state_dict()[w], golden_model.state_dict()[w])
    assert latest.state_dict()[w].abs().sum() == 0


def test_manifest_revision_is_used_when_not_overridden(tmp_path, hf_home, hub, golden_files, golden_config,
                                                       golden_model):
    first = hub.add("test-org/tiny32", golden_files)
    hub.add("test-org/tiny32", {"config.json": golden_files["config.json"], "model.safetensors": b"garbage"})
    sha = hashlib.sha256(golden_files["model.safetensors"]).hexdigest()
    manifest = write_manifest(tmp_path / "m.json", [entry("tiny", golden_config, revision=first, sha256=sha)])
    model = vdvae_zoo.load("tiny", manifest=manifest, device="cpu")  # main now points at garbage
    assert torch.equal(model.decoder.gain, golden_model.decoder.gain)
    assert any(f"/resolve/{first}/" in r for r in hub.server.requests)


def test_sha_mismatch_deletes_the_file_and_says_so(tmp_path, hf_home, hub, golden_files, golden_config):
    commit = hub.add("test-org/tiny32", golden_files)
    manifest = write_manifest(tmp_path / "m.json", [entry("tiny", golden_config, revision=commit, sha256="0" * 64)])
    with pytest.raises(IntegrityError, match="sha256.*deleted"):
        vdvae_zoo.load("tiny", manifest=manifest)
    blobs = [p for p in hf_home.rglob("*") if p.is_file() and p.stat().st_size == len(golden_files["model.safetensors"])]
    assert blobs == []


def test_offline_with_nothing_cached_names_the_fix(tmp_path, hf_home, golden_config, monkeypatch):
    manifest = write_manifest(tmp_path / "m.json", [entry("tiny", golden_config, revision="a" * 40, sha256="b" * 64)])
    with pytest.raises(FileNotFoundError, match="vdvae-zoo download tiny"):
        vdvae_zoo.load("tiny", manifest=manifest, local_files_only=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not in the local cache"):
        vdvae_zoo.load("tiny", manifest=manifest)


# ------------------------------------------------------------------------------------------ by name, source
def test_unpublished_entry_downloads_the_original_and_converts_it_once(tmp_path, hf_home, source, golden_config,
                                                                      golden_expected, golden_images):
    sha = sha256_file(TINY / "model-ema.th")
    manifest = write_manifest(tmp_path / "m.json", [
        entry("tiny", golden_config, url=source.url + "/tiny32-model-ema.th", source_sha=sha)])
    model = vdvae_zoo.load("tiny", manifest=manifest, device="cpu")
    assert_golden_likelihood(model, golden_expected, golden_images)
    folder = hf_home / "hub" / "vdvae-zoo" / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors", "source.json"]
    assert json.loads((folder / "source.json").read_text())["sha256"] == sha
    n = len(source.requests)
    vdvae_zoo.load("tiny", manifest=manifest)
    assert len(source.requests) == n, "second load comes from the cache"
    assert not list((hf_home / "hub" / "vdvae-zoo").rglob("*.th")), "original deleted after conversion"


def test_interrupted_download_leaves_nothing_in_the_cache(tmp_path, hf_home, source, golden_config):
    manifest = write_manifest(tmp_path / "m.json", [entry("tiny", golden_config, url=source.url + "/tiny32-model-ema.th")])
    source.set_truncate(1000)
    with pytest.raises(ConnectionError, match="tiny32-model-ema.th"):
        vdvae_zoo.load("tiny", manifest=manifest)
    leftovers = [p for p in (hf_home / "hub").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == []
    source.set_truncate(None)
    assert vdvae_zoo.load("tiny", manifest=manifest).num_layers == 13


def test_wrong_source_sha_is_refused(tmp_path, hf_home, source, golden_config):
    manifest = write_manifest(tmp_path / "m.json", [
        entry("tiny", golden_config, url=source.url + "/tiny32-model-ema.th", source_sha="c" * 64)])
    with pytest.raises(IntegrityError, match="does not match"):
        vdvae_zoo.load("tiny", manifest=manifest)
    assert not [p for p in (hf_home / "hub").rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_two_processes_loading_the_same_name_share_one_download(tmp_path, hf_home, source, golden_config):
    manifest = write_manifest(tmp_path / "m.json", [entry("tiny", golden_config, url=source.url + "/tiny32-model-ema.th")])
    script = textwrap.dedent(f"""
        import vdvae_zoo
        m = vdvae_zoo.load("tiny", manifest={str(manifest)!r}, device="cpu")
        print(m.num_layers)
    """)
    env = dict(os.environ, HF_HOME=str(hf_home))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].strip() for o in outs] == ["13", "13"]
    assert len(source.requests) == 1, source.requests


# ---------------------------------------------------------------------------------------------- local files
def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.th"
    with open(bad, "wb") as f:
        pickle.dump({"encoder.in_conv.weight": Exploit()}, f)
    with pytest.raises(ValueError, match="refused to load .*evil.th"):
        vdvae_zoo.load(bad, config="cifar10")
    torch.save({"weights": torch.zeros(1), "meta": {"epoch": 3}}, tmp_path / "mixed.th")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        vdvae_zoo.read_checkpoint(tmp_path / "mixed.th")
    assert not marker.exists()


def test_mismatched_checkpoint_lists_the_first_differences(tmp_path, golden_config):
    state = torch.load(TINY / "model-ema.th", map_location="cpu", weights_only=True)
    state["decoder.gain"] = torch.ones(1, 7, 1, 1)
    del state["decoder.dec_blocks.2.z_proj.weight"]
    torch.save(state, tmp_path / "bad.th")
    with pytest.raises(ValueError, match="2 differences") as info:
        vdvae_zoo.load(tmp_path / "bad.th", config=golden_config)
    assert "missing decoder.dec_blocks.2.z_proj.weight (32, 4, 1, 1)" in str(info.value)
    assert "decoder.gain: file has shape (1, 7, 1, 1), config expects (1, 32, 1, 1)" in str(info.value)
    with pytest.raises(ValueError, match="config="):
        vdvae_zoo.load(TINY / "model-ema.th")


def test_save_pretrained_round_trip_and_safetensors_file(tmp_path, golden_model, golden_expected, golden_images):
    folder = golden_model.save_pretrained(tmp_path / "m")
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: vdvae-zoo") and "vdvae_zoo.load" in card
    for target in (folder, folder / "model.safetensors"):
        model = vdvae_zoo.VDVAE.from_pretrained(str(target), device="cpu")
        assert_golden_likelihood(model, golden_expected, golden_images)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        vdvae_zoo.load(folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vdvae_zoo.load(str(tmp_path / "nope.th"))


def test_from_pretrained_accepts_a_hub_repo_id(hf_home, hub, golden_files, golden_model):
    hub.add("someone/my-vdvae", golden_files)
    model = vdvae_zoo.VDVAE.from_pretrained("someone/my-vdvae", device="cpu")
    assert torch.equal(model.decoder.gain, golden_model.decoder.gain)


def test_convert_original_writes_a_loadable_folder(tmp_path, golden_config, golden_expected, golden_images):
    folder = vdvae_zoo.convert_original(TINY / "model-cudatagged.th", golden_config, tmp_path / "out")
    assert_golden_likelihood(vdvae_zoo.load(folder, device="cpu"), golden_expected, golden_images)


# ------------------------------------------------------------------------------------------------ manifest
def test_installed_manifest_equals_the_repository_file():
    installed = resources.files("vdvae_zoo").joinpath("weights_manifest.json").read_text()
    assert json.loads(installed) == json.loads((REPO / "weights_manifest.json").read_text())


def test_shipped_manifest_covers_the_released_models():
    m = load_manifest()
    assert set(m.names) >= {"cifar10", "cifar10-seed0", "cifar10-seed3", "imagenet32", "imagenet64", "ffhq256",
                            "ffhq1024"}
    assert m.get("cifar10") is m.get("cifar10-seed0")
    assert m.get("ffhq256").bits == 5 and m.get("imagenet64").bits == 8
    assert not m.get("ffhq1024").encoder_verified
    for e in m.entries:
        cfg = e.resolve_config()
        with torch.device("meta"):
            n = sum(p.numel() for p in vdvae_zoo.VDVAE(cfg).parameters())
        assert n == e.parameters and cfg.image_size == e.resolution
        assert e.source["url"].startswith("https://openaipublic.blob.core.windows.net/very-deep-vaes-assets/")


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownModelError, match=r"ffhq25.*Did you mean 'ffhq256'.*Known models: cifar10-seed0"):
        vdvae_zoo.load("ffhq25")


@pytest.mark.parametrize("change,fragment", [
    (lambda m: m.pop("bits"), "lacks the field 'bits'"),
    (lambda m: m.update(bits=6), "bits must be 5 or 8"),
    (lambda m: m.update(preset="mnist"), "preset 'mnist'"),
    (lambda m: m["hub"].update(revision="main"), "40-digit hex"),
    (lambda m: m.update(colour="red"), "unknown fields"),
    (lambda m: m["source"].update(url=None), "source.url"),
])
def test_manifest_validation_errors_are_clear(change, fragment):
    data = json.loads((REPO / "weights_manifest.json").read_text())
    change(data["models"][1])
    with pytest.raises(ValueError, match=fragment):
        Manifest.from_json(data, "test.json")


def test_finetune_by_name_starts_from_the_released_ema_weights(tmp_path, hf_home, hub, golden_files, golden_config,
                                                             golden_model):
    from PIL import Image
    from vdvae_zoo.config import TRAINING_PRESETS
    from vdvae_zoo.images import sample_photos
    from vdvae_zoo.train import Trainer, TrainOptions

    commit = hub.add("test-org/tiny32", golden_files)
    sha = hashlib.sha256(golden_files["model.safetensors"]).hexdigest()
    manifest = write_manifest(tmp_path / "m.json", [entry("tiny-released", golden_config, revision=commit, sha256=sha)])
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, img in enumerate(sample_photos(5, 32)):
        Image.fromarray(img).save(photos / f"{i}.png")
    trainer = Trainer(TrainOptions(data=str(photos), out=str(tmp_path / "run"), model="tiny-released",
                                   manifest=str(manifest), steps=2, batch_size=2, val_fraction=0.2, val_every=0,
                                   save_every=0, sample_every=0, device="cpu"))
    released = golden_model.state_dict()
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, released[name]), name
        assert torch.equal(trainer.ema.state_dict()[name], released[name]), name
    assert trainer.opt.lr == TRAINING_PRESETS["cifar10"]["lr"]  # the manifest entry's preset gives the defaults
    assert trainer.opt.ema_rate == TRAINING_PRESETS["cifar10"]["ema_rate"]
    assert trainer.train()["step"] == 2
    assert vdvae_zoo.load(tmp_path / "run", device="cpu").config.to_dict() == golden_model.config.to_dict()


def test_publish_uploads_and_pins_a_manifest_that_loads(tmp_path, hf_home, hub, golden_config, monkeypatch):
    """`vdvae-zoo publish` end to end, with only the Hub's upload protocol played by the fake Hub: the converted
    folder is uploaded, the manifest it writes pins that commit and sha256, and loading by name through it gives
    the original file's weights, even after a later commit moves `main`."""
    import huggingface_hub
    from click.testing import CliRunner
    from vdvae_zoo.cli import main

    calls = []

    def create_repo(self, repo_id, *, private=False, exist_ok=False, **kwargs):
        calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, **kwargs):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        calls.append(("upload_folder", repo_id, sorted(files)))
        oid = hub.add(repo_id, files)
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}",
                                          commit_message=commit_message, commit_description="", oid=oid)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    manifest = write_manifest(tmp_path / "m.json", [entry("tiny", golden_config, url="http://127.0.0.1:9/unused")])
    pinned = tmp_path / "pinned.json"
    # model.th was saved from DistributedDataParallel: every key starts with "module.".
    result = CliRunner().invoke(main, ["publish", f"tiny={TINY / 'model.th'}", "--org", "test-org",
                                       "--manifest", str(manifest), "--manifest-out", str(pinned)])
    assert result.exit_code == 0, result.output
    assert calls == [("create_repo", "test-org/tiny", False, True),
                     ("upload_folder", "test-org/tiny", ["README.md", "config.json", "model.safetensors"])]
    pin = json.loads(pinned.read_text())["models"][0]
    commit = hub.heads["test-org/tiny"]
    uploaded = hub.repos["test-org/tiny"][commit]
    assert pin["hub"] == {"repo_id": "test-org/tiny", "revision": commit, "filenames": ["config.json", "model.safetensors"],
                          "sha256": hashlib.sha256(uploaded["model.safetensors"]).hexdigest()}
    assert pin["source"]["sha256"] == sha256_file(TINY / "model.th")
    assert json.loads(result.output[result.output.index("{"):])["tiny"]["revision"] == commit

    hub.add("test-org/tiny", {"config.json": b"{}", "model.safetensors": b"not this one"})  # main moves on
    published = vdvae_zoo.load("tiny", manifest=pinned, device="cpu")
    original = vdvae_zoo.load(TINY / "model.th", config=golden_config, device="cpu")
    published_state, original_state = published.state_dict(), original.state_dict()
    assert published_state.keys() == original_state.keys()
    for name, tensor in original_state.items():
        assert torch.equal(published_state[name], tensor), name
    assert "tiny" in (hub.repos["test-org/tiny"][commit]["README.md"]).decode()
