"""Issue #14: a file loads as what its tensors say. Tiny analogues of the ffhq1024 question: a 'published'
architecture P, a file with A's relationship to it (another resolution, width profile and block counts) and B's
(same resolution, other widths, encoder two blocks shorter), served by the loopback source server."""

import json
import warnings

import pytest
import torch
from click.testing import CliRunner
from fakehub import FileServer
from helpers import entry, tiny_config_dict, write_manifest

import vdvae_zoo
from vdvae_zoo import VDVAE, VDVAEConfig
from vdvae_zoo.cli import main
from vdvae_zoo.config import PRESETS
from vdvae_zoo.weights.manifest import load_manifest
from vdvae_zoo.weights.original import match_architectures
from vdvae_zoo.weights.pretrained import ArchitectureWarning

NOTE_A = "the released tiny file holds a 16x16 model"
NOTE_B = "the released tiny file holds a wider model with two encoder blocks fewer"


@pytest.fixture()
def architectures(golden_config_dict):
    p = dict(golden_config_dict)
    a = dict(tiny_config_dict(), shift=p["shift"], scale=p["scale"])
    b = dict(p, custom_width_str="16:48,8:48,4:48,1:48", enc_blocks=p["enc_blocks"].rsplit(",", 1)[0])
    assert b["enc_blocks"].endswith("4d4")
    return {"P": p, "A": a, "B": b}


def original_file(path, config, seed, ddp=True):
    """An original-style .th of random weights for `config` (DDP-prefixed like the authors' -model.th files)."""
    torch.manual_seed(seed)
    state = VDVAE(VDVAEConfig.from_dict(config)).state_dict()
    torch.save({("module." if ddp else "") + k: v for k, v in state.items()}, path)
    return path.read_bytes()


@pytest.fixture()
def released(tmp_path, hf_home, architectures):
    """A source server holding one file per architecture, and a manifest entry 'tiny' published as P with
    candidates A and B (and a second entry whose candidate C has B's shapes but other preprocessing)."""
    files = {f"{k}.th": original_file(tmp_path / f"{k}.th", c, i) for i, (k, c) in enumerate(architectures.items())}
    files["D.th"] = original_file(tmp_path / "D.th", tiny_config_dict(zdim=8), 9)
    server = FileServer(files)

    def manifest(name, candidates):
        e = entry(name, architectures["P"], url=f"{server.url}/{name}.th")
        e["candidates"] = candidates
        return e

    def write(*entries):
        return write_manifest(tmp_path / f"m{len(list(tmp_path.glob('m*.json')))}.json", list(entries))

    candidates = [
        {"name": "A", "config": architectures["A"], "note": NOTE_A},
        {"name": "B", "config": architectures["B"], "note": NOTE_B},
    ]
    yield server, manifest, write, candidates, architectures
    server.close()


@pytest.mark.parametrize("served,expected,note", [("P", "P", None), ("A", "A", NOTE_A), ("B", "B", NOTE_B)])
def test_a_name_loads_the_architecture_its_file_holds(released, served, expected, note):
    server, manifest, write, candidates, architectures = released
    m = write(manifest(served, candidates))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = vdvae_zoo.load(served, manifest=m, device="cpu")
    said = [str(w.message) for w in caught if issubclass(w.category, ArchitectureWarning)]
    assert model.config == VDVAEConfig.from_dict(architectures[expected])
    assert said == (
        []
        if note is None
        else [f"{served}: {note}. The model loaded is the one the file holds (`vdvae-zoo info {served}` shows it)."]
    )
    size = architectures[expected]["image_size"]
    images = model.sample(2, temperature=0.5)
    assert images.shape == (2, size, size, 3) and torch.isfinite(model.likelihood(images).bpd).all()
    # The cache holds the architecture found; `info` reports it, and a second load (from the cache) warns again.
    info = CliRunner().invoke(main, ["info", served, "--manifest", str(m)])
    assert f"architecture: {'published' if expected == 'P' else expected} (read off the downloaded file)" in info.output
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = vdvae_zoo.load(served, manifest=m, device="cpu", local_files_only=True)
    assert again.config == model.config
    assert len([w for w in caught if issubclass(w.category, ArchitectureWarning)]) == (0 if note is None else 1)


def test_before_the_download_info_says_the_architecture_is_not_yet_known(released):
    server, manifest, write, candidates, _ = released
    m = write(manifest("P", candidates))
    out = CliRunner().invoke(main, ["info", "P", "--manifest", str(m)]).output
    assert "architecture: not yet known (not downloaded); the file may hold: published, A, B" in out


def test_a_file_matching_no_candidate_fails_with_the_inspect_report(released):
    server, manifest, write, candidates, _ = released
    m = write(manifest("D", candidates))
    with pytest.raises(
        ValueError,
        match=r"D.th matches none of the known architectures\. The closest is .*"
        r"Run `vdvae-zoo inspect .*D.th`",
    ):
        vdvae_zoo.load("D", manifest=m, device="cpu")


def test_a_file_matching_two_candidates_fails_and_names_both(released):
    server, manifest, write, candidates, architectures = released
    c = dict(architectures["B"], shift=-100.0)  # B's shapes, other preprocessing: the tensors cannot tell them apart
    m = write(manifest("B", candidates + [{"name": "C", "config": c}]))
    with pytest.raises(ValueError, match=r"matches several known architectures .*\(B; C\).*pass config="):
        vdvae_zoo.load("B", manifest=m, device="cpu")


def test_the_encoder_only_fallback_stays_for_a_named_file(tmp_path, released, golden_config_dict):
    server, manifest, write, candidates, architectures = released
    state = torch.load(tmp_path / "P.th", map_location="cpu", weights_only=True)
    del state["module.encoder.enc_blocks.3.c2.weight"]
    torch.save(state, tmp_path / "short.th")
    server.files["short.th"] = (tmp_path / "short.th").read_bytes()
    m = write(manifest("short", candidates))
    with pytest.warns(UserWarning, match="encoder tensors do not match"):
        model = vdvae_zoo.load("short", manifest=m, device="cpu")
    assert model.encoder is None and model.config == VDVAEConfig.from_dict(golden_config_dict)


def test_a_file_without_config_loads_when_one_known_architecture_matches(tmp_path, released):
    server, manifest, write, candidates, architectures = released
    m = write(manifest("P", candidates))
    model = vdvae_zoo.load(tmp_path / "B.th", manifest=m, device="cpu")
    assert model.config == VDVAEConfig.from_dict(architectures["B"])
    with pytest.raises(ValueError, match="matches none of the known architectures"):
        vdvae_zoo.load(tmp_path / "B.th", device="cpu")  # the shipped manifest knows no such model
    # convert and inspect recognise it too
    runner = CliRunner()
    out = runner.invoke(main, ["convert", str(tmp_path / "B.th"), "-o", str(tmp_path / "conv"), "--manifest", str(m)])
    assert out.exit_code == 0, out.output
    assert VDVAEConfig.from_json(tmp_path / "conv" / "config.json") == model.config
    out = runner.invoke(main, ["inspect", str(tmp_path / "A.th"), "--manifest", str(m)])
    assert "matches exactly: P: A" in out.output
    out = runner.invoke(main, ["inspect", str(tmp_path / "D.th"), "--manifest", str(m), "--json"])
    assert json.loads(out.output)["matches"] == []


def test_inspect_download_prints_the_architecture_and_the_source_sha(released):
    server, manifest, write, candidates, _ = released
    m = write(manifest("A", candidates))
    out = CliRunner().invoke(main, ["inspect", "A", "--download", "--manifest", str(m)])
    assert out.exit_code == 0, out.output
    import hashlib

    sha = hashlib.sha256(server.files["A.th"]).hexdigest()
    assert f"A: architecture A; source sha256 {sha}; 16x16, 7 stochastic layers, 7 encoder blocks" in out.output


def _meta_state(config: VDVAEConfig):
    with torch.device("meta"):
        return VDVAE(config).state_dict()


@pytest.mark.slow  # several seconds (processes, training, long chains): the quick run skips it
def test_full_size_ffhq1024_hypotheses_are_recognised_on_meta():
    entry = load_manifest().get("ffhq1024")
    a = _meta_state(VDVAEConfig.from_preset("ffhq256"))  # hypothesis A: the ffhq256 architecture
    published = _meta_state(VDVAEConfig.from_preset("ffhq1024"))
    assert match_architectures(a, entry.architectures(), VDVAE.expected_shapes).unique[0] == ["A"]
    assert match_architectures(published, entry.architectures(), VDVAE.expected_shapes).unique[0] == ["published"]
    b = _meta_state(entry.architectures()["B"])
    assert match_architectures(b, entry.architectures(), VDVAE.expected_shapes).unique[0] == ["B"]
    # Among every known architecture, A is one config with three names.
    assert VDVAE.identify(a).unique[0] == ["preset ffhq256", "ffhq256", "ffhq1024: A"]
    assert set(PRESETS) <= {label.split(" ", 1)[1] for label in load_manifest().architectures() if " " in label}
