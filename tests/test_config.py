import json

import pytest
import torch

import vdvae_zoo
from vdvae_zoo import VDVAE, VDVAEConfig
from vdvae_zoo.blocks import parse_block_string
from vdvae_zoo.config import PRESETS
from vdvae_zoo.training.options import TRAINING_PRESETS

EXPECTED = {  # SPEC §1: parameters, tensors, decoder layers, encoder blocks
    "cifar10": (39_145_700, 1_393, 43, 33),
    "imagenet32": (119_280_868, 2_423, 78, 48),
    "imagenet64": (125_005_860, 2_482, 75, 65),
    "ffhq256": (114_874_852, 2_272, 66, 68),
    "ffhq1024": (109_366_904, 2_392, 70, 70),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_presets_build_on_meta_with_released_sizes(name):
    with torch.device("meta"):
        model = VDVAE(VDVAEConfig.from_preset(name))
    state = model.state_dict()
    params, tensors, layers, enc_blocks = EXPECTED[name]
    assert sum(v.numel() for v in state.values()) == params
    assert len(state) == tensors
    assert model.num_layers == layers and len(model.encoder.enc_blocks) == enc_blocks
    assert all(v.device.type == "meta" for v in state.values())


def test_preset_key_names_follow_the_original_module_tree():
    with torch.device("meta"):
        state = VDVAE(VDVAEConfig.from_preset("ffhq1024")).state_dict()
    prefixes = {k.rsplit(".", 1)[0] for k in state}
    assert "encoder.in_conv" in prefixes and "decoder.out_net.out_conv" in prefixes
    assert {"decoder.gain", "decoder.bias"} <= set(state)
    assert state["decoder.gain"].shape == (1, 16, 1, 1)
    assert state["decoder.out_net.out_conv.weight"].shape == (2 * 10, 16, 1, 1)
    assert state["encoder.enc_blocks.69.c4.weight"].shape == (512, 128, 1, 1)
    # ffhq1024 custom widths: 512 -> 32 channels, 1x1 middle convs at resolution 1
    assert state["decoder.dec_blocks.69.resnet.c2.weight"].shape == (4, 4, 3, 3)  # 1024m512: width 16, bottleneck 4
    assert state["decoder.dec_blocks.0.resnet.c2.weight"].shape == (128, 128, 1, 1)
    bias_shapes = [tuple(state[f"decoder.bias_xs.{j}"].shape) for j in range(6)]
    assert bias_shapes == [(1, 512, r, r) for r in (1, 4, 8, 16, 32, 64)]
    assert "decoder.bias_xs.6" not in state  # no_bias_above = 64
    for key in (
        "encoder.enc_blocks.0.c1.weight",
        "decoder.dec_blocks.0.enc.c4.weight",
        "decoder.dec_blocks.0.prior.c4.bias",
        "decoder.dec_blocks.0.z_proj.weight",
    ):
        assert key in state


def test_presets_hold_spec_values():
    c = VDVAEConfig.from_preset("ffhq256")
    assert c.low_bit and c.width == 512 and c.zdim == 16 and c.num_mixtures == 10
    assert c.shift == -112.8666757481 and c.scale == 1 / 69.84780273
    assert c.shift_loss == -127.5 and c.scale_loss == 1 / 127.5
    c = VDVAEConfig.from_preset("ffhq1024")
    assert c.num_mixtures == 2 and c.width_at(512) == 32 and c.width_at(1024) == 16 and c.width_at(4) == 512
    assert TRAINING_PRESETS["ffhq1024"]["skip_threshold"] == 500 and TRAINING_PRESETS["cifar10"]["ema_rate"] == 0.9999
    assert not VDVAEConfig.from_preset("imagenet64").low_bit
    assert VDVAEConfig.from_preset("ImageNet-64").image_size == 64


def test_ffhq1024_preprocessing_equals_the_original_on_unit_pixels():
    c = VDVAEConfig.from_preset("ffhq1024")
    with torch.device("meta"):
        model = VDVAE(c)
    model = model.to_empty(device="cpu")
    pixels = torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8).expand(1, 1024, 1024, 3)
    x_in, target = model.preprocess(pixels)
    unit = pixels.float() / 255
    torch.testing.assert_close(x_in.permute(0, 2, 3, 1), (unit - 0.4387) / 0.2743)
    torch.testing.assert_close(target, (unit - 0.5) * 2)


def test_from_dict_ignores_unknown_keys_and_defaults_to_cifar_preprocessing():
    d = dict(PRESETS["imagenet32"], dataset="imagenet32", scale_encblock=False, lr=1e-4)
    for k in ("shift", "scale", "shift_loss", "scale_loss"):
        d.pop(k)
    c = VDVAEConfig.from_dict(d)
    assert c.width == 512 and c.shift == -120.63838 and c.scale == 1 / 64.16736 and c.low_bit is False


def test_json_round_trip(tmp_path):
    for name in PRESETS:
        c = VDVAEConfig.from_preset(name)
        assert VDVAEConfig.from_json(c.to_json()) == c
        assert VDVAEConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    path = tmp_path / "config.json"
    path.write_text(VDVAEConfig.from_preset("ffhq256").to_json())
    assert VDVAEConfig.from_json(path) == VDVAEConfig.from_preset("ffhq256")


def test_list_models_lists_the_presets():
    assert set(PRESETS) <= set(vdvae_zoo.list_models())
    assert vdvae_zoo.list_presets() == list(PRESETS)


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("enc_blocks", "32x2,32q2", "32q2"),
        ("enc_blocks", "32x2,32m2", "32m2"),
        ("dec_blocks", "1x1,4d1", "4d1"),
        ("dec_blocks", "1x1,4m3,32x1", "4m3"),
        ("enc_blocks", "32x2,32d3", "32d3"),
        ("enc_blocks", "16x2", "block 0 is at resolution 16"),
        ("dec_blocks", "1x1,4m1,4x1,8m4,8x1,16m8,16x1", "must end at the image resolution"),
        ("dec_blocks", "1x1,3x1,32m1", "resolution 3"),
        ("enc_blocks", "", "enc_blocks"),
        ("custom_width_str", "32:16", "image resolution"),
        ("custom_width_str", "16:8", "must not shrink"),
        ("custom_width_str", "4:abc", "4:abc"),
        ("width", 0, "width"),
    ],
)
def test_invalid_configs_name_the_bad_item(field, value, fragment):
    d = dict(
        image_size=32,
        width=32,
        zdim=4,
        enc_blocks="32x2,32d2,16x2,16d2,8x2,8d2,4x2,4d4,1x2",
        dec_blocks="1x1,4m1,4x2,8m4,8x2,16m8,16x2,32m16,32x2",
    )
    d[field] = value
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        VDVAEConfig.from_dict(d)


def test_parse_block_string():
    assert parse_block_string("4x2,8m4,8", "decoder") == [
        (4, None, None),
        (4, None, None),
        (8, None, 4),
        (8, None, None),
    ]
    assert parse_block_string("32d2", "encoder")[0].down_rate == 2


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match="cifar10, imagenet32"):
        VDVAEConfig.from_preset("mnist")


def test_misspelled_config_keys_are_refused_with_the_closest_name():
    with pytest.raises(ValueError, match="unknown config field 'zdims' \\(did you mean 'zdim'\\?\\)"):
        VDVAEConfig.from_dict({"zdims": 8})
    with pytest.raises(ValueError, match="did you mean 'num_mixtures'"):
        VDVAEConfig.from_dict({"num_mixture": 3})
    # The original implementation's other hps fields are accepted and ignored.
    original_hps = dict(PRESETS["cifar10"], dataset="cifar10", lr=2e-4, scale_encblock=False)
    assert VDVAEConfig.from_dict(original_hps).zdim == 16


def test_huge_block_strings_and_widths_are_refused_at_once():
    import time

    start = time.perf_counter()
    with pytest.raises(ValueError, match="more than 2048 blocks"):
        VDVAEConfig.from_dict({"image_size": 16, "width": 8, "enc_blocks": "16x100000000", "dec_blocks": "16x1"})
    with pytest.raises(ValueError, match="width is 100000000; at most"):
        VDVAEConfig.from_dict(dict(PRESETS["cifar10"], width=100_000_000))
    assert time.perf_counter() - start < 1.0  # refused by the bound, not by running out of memory
