"""Shared fixtures. The golden reference data is read from ../shared/golden beside the repository (never copied)."""

import json
import os
import tempfile
from pathlib import Path

# Before huggingface_hub is imported anywhere: never touch the user's cache, never phone home.
_HF_HOME = tempfile.mkdtemp(prefix="vdvae-zoo-test-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ.pop("HF_HUB_CACHE", None)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_ENDPOINT", None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden"
TINY = GOLDEN / "tiny32"


def tiny_config_dict(**overrides):
    """A small, fast architecture (not the golden one) for tests that need a model but no reference numbers."""
    d = dict(image_size=16, width=16, zdim=4, num_mixtures=2,
             enc_blocks="16x1,16d2,8x1,8d2,4x1,4d4,1x1", dec_blocks="1x1,4m1,4x1,8m4,8x1,16m8,16x1")
    d.update(overrides)
    return d


@pytest.fixture(scope="session")
def golden_expected():
    return json.loads((TINY / "expected.json").read_text())


@pytest.fixture(scope="session")
def golden_images():
    return np.load(TINY / "images.npy")


@pytest.fixture()
def golden_model(golden_expected):
    import vdvae_zoo
    return vdvae_zoo.load(TINY / "model-ema.th", config=golden_expected["config"] | golden_expected["preprocess"],
                          device="cpu")


@pytest.fixture()
def tiny_model():
    import vdvae_zoo
    torch.manual_seed(123)
    return vdvae_zoo.VDVAE(vdvae_zoo.VDVAEConfig.from_dict(tiny_config_dict())).eval()
