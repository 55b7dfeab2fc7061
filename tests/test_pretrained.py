"""Loading from files, folders and Hub ids, saving, converting: the from_pretrained mixin."""

import json
import os
import pickle

import pytest
import torch
from helpers import TINY, assert_golden_likelihood, entry, write_manifest

import vdvae_zoo


@pytest.fixture()
def golden_config(golden_config_dict):
    return golden_config_dict


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


def test_loading_an_unpublished_name_builds_and_checks_the_model_once(
    tmp_path, hf_home, source, golden_config, monkeypatch
):
    from vdvae_zoo import VDVAE
    from vdvae_zoo.weights import original as weights
    from vdvae_zoo.weights import pretrained

    builds, checks = [], []
    original_init, original_check = VDVAE.__init__, weights.check_state

    def counting_init(self, *args, **kwargs):
        builds.append(1)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(VDVAE, "__init__", counting_init)
    for module in (pretrained, weights):  # the loader's own check and the architecture matcher's
        monkeypatch.setattr(module, "check_state", lambda *a: checks.append(1) or original_check(*a))
    manifest = write_manifest(
        tmp_path / "m.json", [entry("tiny", golden_config, url=f"{source.url}/tiny32-model-ema.th")]
    )
    vdvae_zoo.load("tiny", manifest=manifest, device="cpu")
    assert (builds, checks) == ([1], [1])


def test_from_pretrained_builds_the_class_it_is_called_on_and_reports_the_check(tmp_path, golden_model):
    from vdvae_zoo import VDVAE, LoadReport

    class MyVDVAE(VDVAE):
        pass

    folder = golden_model.save_pretrained(tmp_path / "m")
    model, report = MyVDVAE.from_pretrained(folder, device="cpu", output_loading_info=True)
    assert type(model) is MyVDVAE and isinstance(report, LoadReport) and report.ok and not report.lines()


def test_the_encoder_only_fallback_is_a_decoder_only_model_and_a_report(tmp_path, golden_config):
    from vdvae_zoo import EncoderMismatchError

    state = torch.load(TINY / "model-ema.th", map_location="cpu", weights_only=True)
    del state["encoder.enc_blocks.9.c1.weight"]
    torch.save(state, tmp_path / "short.th")
    with pytest.warns(UserWarning, match="encoder tensors do not match"):
        model, report = vdvae_zoo.load(
            tmp_path / "short.th", config=golden_config, device="cpu", output_loading_info=True
        )
    assert report.only_under("encoder.") and report.missing == [("encoder.enc_blocks.9.c1.weight", (8, 32, 1, 1))]
    assert model.encoder is None and model.sample(1).shape == (1, 32, 32, 3)
    with pytest.raises(EncoderMismatchError, match="loaded without its encoder"):
        model.likelihood(model.sample(1))


def test_a_mistyped_local_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="runs/faces does not exist: it is neither a local folder"):
        vdvae_zoo.load("runs/faces")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="taken as a Hub repository id, it is not in the local cache"):
        vdvae_zoo.load("someone/not-here")


def test_a_cuda_device_without_cuda_is_one_clear_error(golden_config):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="sees no CUDA GPU; use device='cpu'"):
        vdvae_zoo.load(TINY / "model-ema.th", config=golden_config, device="cuda")


def test_config_json_states_its_model_type_and_old_folders_still_load(tmp_path, golden_model):
    folder = golden_model.save_pretrained(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert next(iter(config)) == "model_type" and config["model_type"] == "vdvae"
    del config["model_type"]  # as written before the field existed
    (folder / "config.json").write_text(json.dumps(config))
    assert vdvae_zoo.load(folder, device="cpu").config == golden_model.config
    config["model_type"] = "transformer"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type 'transformer' is not a model family this vdvae-zoo knows"):
        vdvae_zoo.load(folder, device="cpu")
