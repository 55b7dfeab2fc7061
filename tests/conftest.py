"""Fixtures, and the environment every test runs in. Shared helpers are in helpers.py."""

import os
import shutil
import tempfile

# Before huggingface_hub is imported anywhere: never touch the user's cache, never phone home.
_HF_HOME = tempfile.mkdtemp(prefix="vdvae-zoo-test-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ.pop("HF_HUB_CACHE", None)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_ENDPOINT", None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from fakehub import FakeHub, FileServer  # noqa: E402
from helpers import TINY, golden_config, require_golden, tiny_config_dict  # noqa: E402
from helpers import golden_expected as _golden_expected  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HF_HOME, ignore_errors=True)  # leave no temporary folder behind


@pytest.fixture(autouse=True)
def _signal_handlers_are_restored():
    """A test leaves SIGINT and SIGTERM as it found them (#35: a trainer's handler once swallowed the runner's
    SIGTERM). They are put back either way; a test that changed them fails, naming them."""
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    changed = [signal.Signals(s).name for s, handler in before.items() if signal.getsignal(s) != handler]
    for s, handler in before.items():
        signal.signal(s, handler)
    assert not changed, f"the test left its own handlers for {', '.join(changed)} installed; restore them"


@pytest.fixture(scope="session")
def golden_expected():
    return _golden_expected()


@pytest.fixture(scope="session")
def golden_images():
    require_golden()
    return np.load(TINY / "images.npy")


@pytest.fixture()
def golden_model():
    import vdvae_zoo

    return vdvae_zoo.load(TINY / "model-ema.th", config=golden_config(), device="cpu")


@pytest.fixture()
def tiny_model():
    import vdvae_zoo

    torch.manual_seed(123)
    return vdvae_zoo.VDVAE(vdvae_zoo.VDVAEConfig.from_dict(tiny_config_dict())).eval()


# ------------------------------------------------------------------ a loopback Hub and source server, a fresh cache
@pytest.fixture()
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return home


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


@pytest.fixture()
def golden_config_dict():
    """The golden model's config and preprocessing as one dict (what config= takes)."""
    return golden_config()
