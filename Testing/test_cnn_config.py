"""CNN arm: configuration, networks, weight files (the bundle's formats) and preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from GliomaCompareLib.cnn.config import (
    BUNDLE_CHANNELS,
    BUNDLE_REGIONS,
    ClsConfig,
    NetworkSpec,
    SegConfig,
    config_hash,
    load_cnn_config,
)
from GliomaCompareLib.cnn.networks import (
    WeightsError,
    build_network,
    load_weights,
    network_summary,
    read_state_dict,
    size_divisor,
)
from GliomaCompareLib.cnn.preprocess import (
    brain_crop,
    normalize_channels,
    region_targets,
    resize_image,
    uncrop,
)
from GliomaCompareLib.data.conventions import load_convention

# ---- configuration ------------------------------------------------------------------------


def test_default_segmentation_config_is_the_brats_mri_segmentation_bundle():
    cfg = SegConfig()
    assert cfg.network.name == "SegResNet"
    summary = network_summary(cfg.network, len(cfg.channels), len(cfg.regions))
    assert summary["kwargs"] == {
        "blocks_down": [1, 2, 2, 4],
        "blocks_up": [1, 1, 1],
        "dropout_prob": 0.2,
        "init_filters": 16,
    }
    assert summary["in_channels"] == 4 and summary["out_channels"] == 3
    # the bundle's metadata.json: inputs T1c, T1, T2, FLAIR; outputs TC, WT, ET
    assert cfg.channels == BUNDLE_CHANNELS == ("t1ce", "t1", "t2", "flair")
    assert cfg.regions == BUNDLE_REGIONS == ("TC", "WT", "ET")
    assert cfg.threshold == 0.5


def test_yaml_config_maps_onto_the_dataclasses(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "cnn:\n"
        "  seg:\n"
        "    network: {name: UNet, channels: [8, 16, 32], strides: [2, 2]}\n"
        "    patch_size: [32, 32, 16]\n"
        "    roi_size: 64\n"
        "    train: {epochs: 3, learning_rate: 0.002}\n"
        "  cls:\n"
        "    network: resnet10\n"
        "    imbalance: balanced_sampler\n"
        "    input_size: [32, 32, 24]\n"
    )
    cfg = load_cnn_config(path)
    assert cfg.seg.network == NetworkSpec("UNet", {"channels": [8, 16, 32], "strides": [2, 2]})
    assert cfg.seg.patch_size == (32, 32, 16) and cfg.seg.roi_size == (64, 64, 64)
    assert cfg.seg.train.epochs == 3 and cfg.seg.train.learning_rate == 0.002
    assert cfg.seg.train.batch_size == 1  # untouched defaults stay
    assert cfg.seg.channels == BUNDLE_CHANNELS
    assert cfg.cls.network.name == "resnet10" and cfg.cls.imbalance == "balanced_sampler"
    assert cfg.cls.train.batch_size == 4  # the classification default survives a partial train:
    assert size_divisor(cfg.seg.network) == 4
    assert config_hash(cfg.seg) != config_hash(SegConfig())
    assert config_hash(cfg.seg) == config_hash(load_cnn_config(path).seg)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"seg": {"epochs": 3}}, "unknown keys ['epochs']"),
        ({"seg": {"train": {"epoch": 3}}}, "cnn.seg.train: unknown keys ['epoch']"),
        ({"segm": {}}, "unknown keys ['segm']"),
        ({"cls": {"imbalance": "oversample"}}, "cls.imbalance 'oversample'"),
        ({"seg": {"loss": "focal"}}, "seg.loss 'focal'"),
        ({"seg": {"patch_size": [32, 32]}}, "seg.patch_size [32, 32]"),
        ({"seg": {"network": {"init_filters": 8}}}, "expected a mapping with 'name'"),
    ],
)
def test_bad_config_is_refused_naming_the_key(raw, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_cnn_config(raw)


def test_whole_run_config_is_accepted_and_missing_file_named(tmp_path):
    assert load_cnn_config({"cnn": {"seg": {"threshold": 0.4}}}).seg.threshold == 0.4
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_cnn_config(tmp_path / "nope.yaml")


# ---- networks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "task", "out_shape"),
    [
        (
            NetworkSpec("SegResNet", {"init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]}),
            "seg",
            (1, 3, 16, 16, 16),
        ),
        (
            NetworkSpec("UNet", {"channels": [4, 8], "strides": [2], "num_res_units": 1}),
            "seg",
            (1, 3, 16, 16, 16),
        ),
        (NetworkSpec("resnet10", {}), "cls", (1, 1)),
        (
            NetworkSpec(
                "DenseNet121", {"init_features": 8, "growth_rate": 4, "block_config": [1, 1]}
            ),
            "cls",
            (1, 1),
        ),
    ],
)
def test_networks_build_and_map_shapes(spec, task, out_shape):
    net = build_network(spec, 4, out_shape[1], task).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 4, 16, 16, 16))
    assert tuple(out.shape) == out_shape


def test_network_of_the_wrong_task_or_unknown_name_is_refused():
    with pytest.raises(ValueError, match="DenseNet121 is a cls network"):
        build_network(NetworkSpec("DenseNet121"), 4, 3, "seg")
    with pytest.raises(ValueError, match="Unknown network 'VNetX'"):
        build_network(NetworkSpec("VNetX"), 4, 3)
    with pytest.raises(ValueError, match="bad arguments"):
        build_network(NetworkSpec("SegResNet", {"no_such_arg": 1}), 4, 3)


def _bundle_net():
    torch.manual_seed(0)
    return build_network(SegConfig().network, 4, 3, "seg")


@pytest.mark.parametrize("form", ["plain", "wrapped", "ddp", "safetensors"])
def test_bundle_weights_load_in_every_saved_form(tmp_path, form):
    """The bundle's models/model.pt is SegResNet's own state_dict (MONAI CheckpointSaver with a
    single entry saves the bare state dict); DDP and wrapped forms must load too."""
    source = _bundle_net()
    state = source.state_dict()
    assert "convInit.conv.weight" in state and "conv_final.2.conv.weight" in state
    path = tmp_path / ("model.safetensors" if form == "safetensors" else "model.pt")
    if form == "plain":
        torch.save(state, path)
    elif form == "wrapped":
        torch.save({"model": state, "epoch": 3}, path)
    elif form == "ddp":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    torch.manual_seed(1)
    target = build_network(SegConfig().network, 4, 3, "seg")
    assert not torch.equal(
        target.state_dict()["convInit.conv.weight"], state["convInit.conv.weight"]
    )
    load_weights(target, path)
    for key, value in state.items():
        assert torch.equal(target.state_dict()[key], value), key


def test_weights_of_another_architecture_are_refused_with_the_reason(tmp_path):
    small = build_network(NetworkSpec("SegResNet", {"init_filters": 8}), 4, 3, "seg")
    path = tmp_path / "model.pt"
    torch.save(small.state_dict(), path)
    with pytest.raises(WeightsError, match=r"model.pt: weights do not fit .*shape mismatches"):
        load_weights(_bundle_net(), path, describe="SegResNet(init_filters=16)")
    unet = build_network(NetworkSpec("UNet"), 4, 3, "seg")
    torch.save(unet.state_dict(), path)
    with pytest.raises(WeightsError, match="missing keys"):
        load_weights(_bundle_net(), path)


def test_unreadable_or_empty_weight_files_are_named(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"broken\.pt: cannot read weights"):
        read_state_dict(bad)
    with pytest.raises(WeightsError, match=r"missing\.pt: weights file not found"):
        read_state_dict(tmp_path / "missing.pt")
    torch.save({"epoch": 3}, tmp_path / "nostate.pt")
    with pytest.raises(WeightsError, match="holds no state dict"):
        read_state_dict(tmp_path / "nostate.pt")


# ---- preprocessing --------------------------------------------------------------------------


def test_brain_crop_normalisation_and_uncrop():
    rng = np.random.default_rng(0)
    image = np.zeros((2, 20, 18, 16), np.float32)
    image[0, 5:12, 4:10, 3:9] = rng.uniform(1, 5, (7, 6, 6))
    image[1, 6:14, 5:9, 3:8] = rng.uniform(10, 50, (8, 4, 5))
    crop = brain_crop(image, margin=1)
    assert crop.start == (4, 3, 2) and crop.end == (15, 11, 10)
    assert crop.full_shape == (20, 18, 16)
    cropped = image[(slice(None), *crop.slices)]
    norm = normalize_channels(cropped)
    for c in range(2):
        inside = cropped[c] != 0
        expected = (cropped[c][inside] - cropped[c][inside].mean()) / cropped[c][inside].std()
        np.testing.assert_allclose(norm[c][inside], expected, rtol=1e-4, atol=1e-5)
        assert np.all(norm[c][~inside] == 0)
    back = uncrop(cropped, crop)
    np.testing.assert_array_equal(back, image)
    with pytest.raises(ValueError, match="case_x: every voxel is zero"):
        brain_crop(np.zeros((2, 4, 4, 4), np.float32), case_id="case_x")


def test_region_targets_follow_the_convention_order():
    conv = load_convention("brats2020")
    label = np.array([0, 1, 2, 4], np.uint8).reshape(4, 1, 1)
    targets = region_targets(label, ("TC", "WT", "ET"), conv)
    assert targets.shape == (3, 4, 1, 1) and targets.dtype == np.uint8
    np.testing.assert_array_equal(targets[:, :, 0, 0], [[0, 1, 0, 1], [0, 1, 1, 1], [0, 0, 0, 1]])


def test_resize_image_keeps_channels_and_sets_size():
    image = np.random.default_rng(1).normal(size=(4, 30, 20, 10)).astype(np.float32)
    out = resize_image(image, (16, 16, 8))
    assert out.shape == (4, 16, 16, 8) and out.dtype == np.float32
    assert abs(float(out.mean()) - float(image.mean())) < 0.1


def test_classification_defaults():
    cfg = ClsConfig()
    assert cfg.network.name == "DenseNet121" and cfg.imbalance == "weighted_loss"
    assert cfg.threshold_rule == "youden"


def test_command_line_config_accepts_run_configs_presets_and_bare_files(tmp_path):
    from GliomaCompareLib.cnn.commands import _read_config
    from GliomaCompareLib.pipeline.config import available_presets

    run = tmp_path / "run.yaml"
    run.write_text(
        "cnn:\n  enabled: true\n  weights: {seg: /x/model.pt, cls: null}\n  seg: {threshold: 0.4}\n"
    )
    config, weights = _read_config(str(run))
    assert config.seg.threshold == 0.4 and weights == {"seg": "/x/model.pt"}
    bare = tmp_path / "bare.yaml"
    bare.write_text("seg: {threshold: 0.3}\n")
    assert _read_config(str(bare))[0].seg.threshold == 0.3
    if "demo" in available_presets():
        config, _ = _read_config("demo")
        assert config.seg.train.epochs >= 1
    with pytest.raises(FileNotFoundError, match="neither a file nor a preset"):
        _read_config(str(tmp_path / "missing.yaml"))
