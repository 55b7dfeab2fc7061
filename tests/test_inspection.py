"""Checkpoints whose architecture differs from their config (the ffhq1024 case), and `inspect`."""

import pytest
import torch
from helpers import TINY, tiny_config_dict

import vdvae_zoo
from vdvae_zoo import VDVAE, EncoderMismatchError, VDVAEConfig
from vdvae_zoo.weights.inspection import compare_with_config, inspect_checkpoint

FEWER_ENCODER_BLOCKS = "16x1,16d2,8x1,8d2,4x1,4d4,1x1"
CONFIG_ENCODER_BLOCKS = "16x1,16d2,8x1,8d2,4x1,4d4,1x3"  # two more blocks at the end, as in ffhq1024's report


@pytest.fixture()
def short_encoder_file(tmp_path):
    torch.manual_seed(0)
    model = VDVAE(VDVAEConfig.from_dict(tiny_config_dict(enc_blocks=FEWER_ENCODER_BLOCKS)))
    path = tmp_path / "short-encoder.th"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)
    return path, model


def test_encoder_only_mismatch_loads_for_sampling(short_encoder_file):
    path, original = short_encoder_file
    config = tiny_config_dict(enc_blocks=CONFIG_ENCODER_BLOCKS)
    with pytest.warns(UserWarning, match="encoder tensors do not match"):
        model = vdvae_zoo.load(path, config=config, device="cpu")
    for k, v in original.decoder.state_dict().items():
        assert torch.equal(model.decoder.state_dict()[k], v), k
    torch.manual_seed(1)
    a = model.sample(2, temperature=0.7)
    torch.manual_seed(1)
    assert torch.equal(a, original.sample(2, temperature=0.7))
    assert model.decode([], n=1).shape == (1, 16, 16, 3)
    images = torch.zeros(1, 16, 16, 3, dtype=torch.uint8)
    for call in (
        lambda: model.likelihood(images),
        lambda: model.encode(images),
        lambda: model.reconstruct(images, keep=1),
    ):
        with pytest.raises(EncoderMismatchError, match="enc_blocks.*vdvae-zoo inspect"):
            call()


def test_decoder_mismatch_is_refused(short_encoder_file):
    path, _ = short_encoder_file
    config = tiny_config_dict(enc_blocks=FEWER_ENCODER_BLOCKS, dec_blocks="1x1,4m1,4x2,8m4,8x1,16m8,16x1")
    with pytest.raises(ValueError, match=r"missing decoder\.dec_blocks\.7\.") as info:
        vdvae_zoo.load(path, config=config)
    assert "does not match the config" in str(info.value)


def test_inspect_names_the_golden_structure():
    info = inspect_checkpoint(TINY / "model-ema.th")
    assert info.parameters == 135078 and info.tensors == 461
    assert (info.width, info.zdim, info.num_mixtures) == (32, 4, 3)
    assert info.bias_resolutions == [1, 4, 8, 16, 32]
    assert [(r.count, r.width, r.kernel) for r in info.encoder_runs] == [(12, 32, 3), (2, 32, 1)]
    assert [(r.count, r.width, r.kernel) for r in info.decoder_runs] == [(1, 32, 1), (12, 32, 3)]
    text = info.describe()
    assert "encoder: 14 blocks" in text and "decoder: 13 stochastic layers" in text
    assert "not visible in the shapes" in text
    assert inspect_checkpoint(TINY / "model.th").to_dict() == info.to_dict()  # module. prefix stripped


def test_inspect_finds_the_first_difference(short_encoder_file):
    path, _ = short_encoder_file
    diffs = compare_with_config(
        inspect_checkpoint(path), VDVAEConfig.from_dict(tiny_config_dict(enc_blocks=CONFIG_ENCODER_BLOCKS))
    )
    assert diffs == [
        "encoder block 7: file has nothing, config expects width 16, 1x1 (file: 7 encoder blocks, config: 9)"
    ]
    ffhq = VDVAEConfig.from_preset("ffhq1024")
    with torch.device("meta"):
        state = VDVAE(ffhq).state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(("encoder.enc_blocks.68.", "encoder.enc_blocks.69."))}
    info = inspect_checkpoint(state)
    assert len(info.encoder_blocks) == 68 and info.num_mixtures == 2
    assert compare_with_config(info, ffhq)[0].startswith("encoder block 68: file has nothing")
