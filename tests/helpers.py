"""Helpers shared by the tests (import them with `from helpers import ...`; fixtures live in conftest.py)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"  # the repository's own copy of the original implementation's outputs
SHARED_GOLDEN = REPO.parent / "shared" / "golden"  # the project's master copy, beside a developer's checkout only
TINY = GOLDEN / "tiny32"


def require_golden() -> None:
    """Fail (not skip) when the repository's copy of the golden data is missing: every clone carries it."""
    if not (TINY / "expected.json").is_file():
        pytest.fail(f"golden reference data missing at {GOLDEN}: it is part of the repository (tests/golden)")


def golden_expected() -> dict:
    require_golden()
    return json.loads((TINY / "expected.json").read_text())


def golden_config() -> dict:
    e = golden_expected()
    return e["config"] | e["preprocess"]


def tiny_config_dict(**overrides):
    """A small, fast architecture (not the golden one) for tests that need a model but no reference numbers."""
    d = dict(
        image_size=16,
        width=16,
        zdim=4,
        num_mixtures=2,
        enc_blocks="16x1,16d2,8x1,8d2,4x1,4d4,1x1",
        dec_blocks="1x1,4m1,4x1,8m4,8x1,16m8,16x1",
    )
    d.update(overrides)
    return d


def random_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def image_folder(folder: Path, n: int, size: int = 16, seed: int = 0, config: bool = False) -> Path:
    """`folder` (made) holding n random PNGs of size x size ({i:02d}.png); with `config`, the tests' tiny config.json
    beside it (folder.parent / "config.json")."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True)
    for i, im in enumerate(random_images(n, size=size, seed=seed).numpy()):
        Image.fromarray(im).save(folder / f"{i:02d}.png")
    if config:
        (folder.parent / "config.json").write_text(json.dumps(tiny_config_dict()))
    return folder


def seeded(fn, seed: int = 0):
    torch.manual_seed(seed)
    return fn()


def write_manifest(path: Path, entries):
    path.write_text(json.dumps({"models": entries}))
    return path


def entry(name, golden_config, *, repo_id="test-org/tiny32", revision=None, sha256=None, url=None, source_sha=None):
    return {
        "name": name,
        "preset": "cifar10",
        "config": golden_config,
        "dataset": "golden",
        "resolution": 32,
        "bits": 8,
        "parameters": 135078,
        "reported_test_bpd": None,
        "license": "MIT",
        "hub": {
            "repo_id": repo_id,
            "revision": revision,
            "filenames": ["config.json", "model.safetensors"],
            "sha256": sha256,
        },
        "source": {"url": url, "sha256": source_sha},
    }


def assert_golden_likelihood(model, golden_expected, golden_images):
    torch.manual_seed(golden_expected["likelihood"]["seed_set_before"])
    elbo = model.likelihood(golden_images).neg_elbo.numpy()
    np.testing.assert_allclose(elbo, golden_expected["likelihood"]["elbo_nats_per_dim"], rtol=1e-4)


def interrupt_call(monkeypatch, owner, name: str, at: int) -> None:
    """Make call number `at` of `owner.name` raise KeyboardInterrupt (a Ctrl-C in the middle of a run); the
    others run as before."""
    original, calls = getattr(owner, name), {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)
