"""The weights manifest: the shipped file, validation, lookup."""

import json
from importlib import resources

import pytest
import torch
from helpers import REPO

import vdvae_zoo
from vdvae_zoo import UnknownModelError
from vdvae_zoo.weights.manifest import Manifest, load_manifest


def test_installed_manifest_equals_the_repository_file():
    installed = resources.files("vdvae_zoo").joinpath("weights_manifest.json").read_text()
    assert json.loads(installed) == json.loads((REPO / "weights_manifest.json").read_text())


def test_shipped_manifest_covers_the_released_models():
    m = load_manifest()
    assert set(m.names) >= {
        "cifar10",
        "cifar10-seed0",
        "cifar10-seed3",
        "imagenet32",
        "imagenet64",
        "ffhq256",
        "ffhq1024",
    }
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


@pytest.mark.parametrize(
    "change,fragment",
    [
        (lambda m: m.pop("bits"), "lacks the field 'bits'"),
        (lambda m: m.update(bits=6), "bits must be 5 or 8"),
        (lambda m: m.update(preset="mnist"), "preset 'mnist'"),
        (lambda m: m["hub"].update(revision="main"), "40-digit hex"),
        (lambda m: m.update(colour="red"), "unknown fields"),
        (lambda m: m["source"].update(url=None), "source.url"),
    ],
)
def test_manifest_validation_errors_are_clear(change, fragment):
    data = json.loads((REPO / "weights_manifest.json").read_text())
    change(data["models"][1])
    with pytest.raises(ValueError, match=fragment):
        Manifest.from_json(data, "test.json")


@pytest.mark.parametrize("name", ["./../../../X", "../x", "a/b", ".hidden", "x..y", "", "a b"])
def test_names_that_could_leave_the_cache_are_refused(name):
    data = json.loads((REPO / "weights_manifest.json").read_text())
    data["models"][1]["name"] = name
    with pytest.raises(ValueError, match="not a plain name"):
        Manifest.from_json(data, "evil.json")
    data["models"][1]["name"] = "ok"
    data["models"][1]["aliases"] = [name]
    with pytest.raises(ValueError, match="not a plain name"):
        Manifest.from_json(data, "evil.json")


@pytest.mark.parametrize(
    "url,ok",
    [
        ("file:///etc/passwd", False),
        ("http://example.com/x.th", False),
        ("ftp://example.com/x.th", False),
        ("https://example.com/x.th", True),
        ("http://127.0.0.1:8000/x.th", True),
        ("http://localhost/x.th", True),
    ],
)
def test_sources_are_https_or_loopback_http(url, ok):
    data = json.loads((REPO / "weights_manifest.json").read_text())
    data["models"][1]["source"]["url"] = url
    if ok:
        assert Manifest.from_json(data).get(data["models"][1]["name"]).source["url"] == url
    else:
        with pytest.raises(ValueError, match="https URL"):
            Manifest.from_json(data)


def test_the_cli_refuses_a_manifest_with_an_escaping_name(tmp_path):
    from click.testing import CliRunner

    from vdvae_zoo.cli import main

    data = json.loads((REPO / "weights_manifest.json").read_text())
    data["models"][0]["name"] = "../../outside"
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps(data))
    for args in (["list", "--manifest", str(bad)], ["download", "../../outside", "--manifest", str(bad)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "not a plain name" in result.output, result.output
    assert not (tmp_path.parent / "outside").exists()


def test_lookup_by_resolution_follows_the_manifest_order():
    man = load_manifest()
    assert man.for_resolution(32).name == "cifar10-seed0"  # listed before imagenet32
    assert man.for_resolution(64).name == "imagenet64" and man.for_resolution(256).name == "ffhq256"
    assert man.for_resolution(48) is None
