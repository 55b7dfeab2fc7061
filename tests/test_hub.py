"""Loading by manifest name: the fake Hub and the fake source server on 127.0.0.1, pins, caches, locks."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import TINY, assert_golden_likelihood, entry, write_manifest

import vdvae_zoo
from vdvae_zoo import IntegrityError
from vdvae_zoo.data.files import sha256_file


@pytest.fixture()
def golden_config(golden_config_dict):
    return golden_config_dict


def test_load_by_name_from_the_hub_with_pinned_sha(
    tmp_path, hf_home, hub, golden_files, golden_config, golden_expected, golden_images
):
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


def test_manifest_revision_is_used_when_not_overridden(
    tmp_path, hf_home, hub, golden_files, golden_config, golden_model
):
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
    blobs = [
        p for p in hf_home.rglob("*") if p.is_file() and p.stat().st_size == len(golden_files["model.safetensors"])
    ]
    assert blobs == []


def test_offline_with_nothing_cached_names_the_fix(tmp_path, hf_home, golden_config, monkeypatch):
    manifest = write_manifest(tmp_path / "m.json", [entry("tiny", golden_config, revision="a" * 40, sha256="b" * 64)])
    with pytest.raises(FileNotFoundError, match="vdvae-zoo download tiny"):
        vdvae_zoo.load("tiny", manifest=manifest, local_files_only=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not in the local cache"):
        vdvae_zoo.load("tiny", manifest=manifest)


def test_unpublished_entry_downloads_the_original_and_converts_it_once(
    tmp_path, hf_home, source, golden_config, golden_expected, golden_images
):
    sha = sha256_file(TINY / "model-ema.th")
    manifest = write_manifest(
        tmp_path / "m.json", [entry("tiny", golden_config, url=source.url + "/tiny32-model-ema.th", source_sha=sha)]
    )
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
    manifest = write_manifest(
        tmp_path / "m.json", [entry("tiny", golden_config, url=source.url + "/tiny32-model-ema.th")]
    )
    source.set_truncate(1000)
    with pytest.raises(ConnectionError, match="tiny32-model-ema.th"):
        vdvae_zoo.load("tiny", manifest=manifest)
    leftovers = [p for p in (hf_home / "hub").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == []
    source.set_truncate(None)
    assert vdvae_zoo.load("tiny", manifest=manifest).num_layers == 13


def test_wrong_source_sha_is_refused(tmp_path, hf_home, source, golden_config):
    manifest = write_manifest(
        tmp_path / "m.json",
        [entry("tiny", golden_config, url=source.url + "/tiny32-model-ema.th", source_sha="c" * 64)],
    )
    with pytest.raises(IntegrityError, match="does not match"):
        vdvae_zoo.load("tiny", manifest=manifest)
    assert not [p for p in (hf_home / "hub").rglob("*") if p.is_file() and not p.name.endswith(".lock")]


@pytest.mark.slow  # several seconds (processes, training, long chains): the quick run skips it
def test_two_processes_loading_the_same_name_share_one_download(tmp_path, hf_home, source, golden_config):
    manifest = write_manifest(
        tmp_path / "m.json", [entry("tiny", golden_config, url=source.url + "/tiny32-model-ema.th")]
    )
    script = textwrap.dedent(f"""
        import vdvae_zoo
        m = vdvae_zoo.load("tiny", manifest={str(manifest)!r}, device="cpu")
        print(m.num_layers)
    """)
    env = dict(os.environ, HF_HOME=str(hf_home))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].strip() for o in outs] == ["13", "13"]
    assert len(source.requests) == 1, source.requests


def test_a_revision_override_on_a_pinned_entry_warns_that_the_pin_is_off(
    tmp_path, hf_home, hub, golden_files, golden_config
):
    first = hub.add("test-org/tiny32", golden_files)
    second = hub.add("test-org/tiny32", golden_files)
    sha = hashlib.sha256(golden_files["model.safetensors"]).hexdigest()
    manifest = write_manifest(tmp_path / "m.json", [entry("tiny", golden_config, revision=first, sha256=sha)])
    with pytest.warns(UserWarning, match=f"revision '{second}' replaces the manifest's pinned {first}"):
        vdvae_zoo.load("tiny", manifest=manifest, revision=second, device="cpu")


def test_a_symlinked_cache_file_is_unlinked_never_its_target_outside(
    tmp_path, hf_home, hub, golden_files, golden_config
):
    commit = hub.add("test-org/tiny32", golden_files)
    sha = hashlib.sha256(golden_files["model.safetensors"]).hexdigest()
    manifest = write_manifest(tmp_path / "m.json", [entry("tiny", golden_config, revision=commit, sha256=sha)])
    vdvae_zoo.load("tiny", manifest=manifest, device="cpu")
    cached = next(p for p in hf_home.rglob("model.safetensors") if "snapshots" in p.parts)
    precious = tmp_path / "precious.safetensors"  # a user's file outside the cache
    precious.write_bytes(b"not the pinned weights")
    cached.unlink()
    cached.symlink_to(precious)
    with pytest.raises(IntegrityError, match="deleted from the cache"):
        vdvae_zoo.load("tiny", manifest=manifest, device="cpu", local_files_only=True)
    assert precious.read_bytes() == b"not the pinned weights" and not cached.is_symlink()


def test_a_download_that_trickles_past_its_deadline_stops_and_leaves_nothing(tmp_path, source):
    from vdvae_zoo.weights.hub import fetch_url

    destination = tmp_path / "x.th"
    with pytest.raises(ConnectionError, match="did not finish within 0 s"):
        fetch_url(f"{source.url}/tiny32-model-ema.th", destination, deadline_s=0)
    assert list(tmp_path.iterdir()) == []


def test_cache_paths_never_leave_the_cache(tmp_path):
    from vdvae_zoo.weights.hub import converted_folder
    from vdvae_zoo.weights.manifest import ModelEntry

    evil = ModelEntry(
        name="../../x",
        preset="cifar10",
        dataset="",
        resolution=32,
        bits=8,
        parameters=0,
        reported_test_bpd=None,
        license="",
        hub={"repo_id": "a/b"},
        source={},
    )  # built past validation
    with pytest.raises(ValueError, match="not a plain name"):
        converted_folder(evil, tmp_path)


def test_a_cached_name_reads_the_manifest_once_and_hashes_nothing_it_verified(
    tmp_path, hf_home, hub, source, golden_files, golden_config, monkeypatch
):
    """How it is measured: count the calls that read a manifest file and that hash a file, over loads by name
    of a published entry (fake Hub, pinned sha256) and of a converted one (fake source server)."""
    from vdvae_zoo.data import files
    from vdvae_zoo.weights import hub as hub_module
    from vdvae_zoo.weights import manifest as manifest_module

    commit = hub.add("test-org/tiny32", golden_files)
    sha = hashlib.sha256(golden_files["model.safetensors"]).hexdigest()
    path = write_manifest(
        tmp_path / "m.json",
        [
            entry("published", golden_config, revision=commit, sha256=sha),
            entry(
                "converted",
                golden_config,
                repo_id="test-org/other",
                url=f"{source.url}/tiny32-model-ema.th",
                source_sha=sha256_file(TINY / "model-ema.th"),
            ),
        ],
    )
    calls = {"hash": 0, "read": 0}
    real_hash, real_read = files.sha256_file, manifest_module.manifest_data

    def counting_hash(p):
        calls["hash"] += 1
        return real_hash(p)

    def counting_read(p=None):
        calls["read"] += 1
        return real_read(p)

    monkeypatch.setattr(hub_module, "sha256_file", counting_hash)
    monkeypatch.setattr(manifest_module, "manifest_data", counting_read)
    first = {name: vdvae_zoo.load(name, manifest=path, device="cpu") for name in ("published", "converted")}
    assert calls["read"] == 1 and calls["hash"] >= 2  # the first loads verify what they downloaded
    calls.update(hash=0, read=0)
    again = {name: vdvae_zoo.load(name, manifest=path, device="cpu") for name in ("published", "converted")}
    assert calls == {"hash": 0, "read": 0}
    for name in first:
        assert again[name].provenance.sha256 == first[name].provenance.sha256 and again[name].provenance.kind == "name"
    assert again["published"].provenance.sha256 == sha
    assert again["converted"].provenance.source_sha256 == sha256_file(TINY / "model-ema.th")
    assert again["converted"].provenance.architecture == "published"
