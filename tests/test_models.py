"""Model zoo: output shapes, zoo parameter names, features, checkpoint round trip."""

import pytest
import torch

from dfkd.checkpoint import load_model_checkpoint, safe_load, save_model_checkpoint
from dfkd.errors import CheckpointError, DfkdError
from dfkd.models import create_model, list_models

EXPECTED_NAMES = {
    "lenet5": ["conv1.weight", "bn1.weight", "conv3.weight", "bn3.running_var", "fc2.bias"],
    "lenet5_half": ["conv1.weight", "bn2.running_mean", "fc1.weight", "fc2.weight"],
    "resnet18": ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight",
                 "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_var",
                 "layer4.1.bn2.weight", "linear.weight"],
    "resnet34": ["layer3.5.conv2.weight", "layer4.2.bn2.bias", "linear.bias"],
    "wrn16_1": ["conv1.weight", "block1.layer.0.bn1.weight", "block2.layer.0.convShortcut.weight",
                "block3.layer.1.conv2.weight", "bn1.running_mean", "fc.weight"],
    "wrn16_2": ["block1.layer.0.convShortcut.weight", "fc.bias"],
    "wrn40_1": ["block3.layer.5.conv2.weight", "fc.weight"],
    "wrn40_2": ["block1.layer.5.bn2.running_var", "fc.weight"],
    "vgg11_bn": ["features.0.weight", "features.1.running_mean", "classifier.weight"],
}
PARAMS = {"lenet5": 61990, "lenet5_half": 15880, "resnet18": 11173962, "wrn16_1": 175066,
          "wrn40_2": 2243546}


def test_registry_lists_every_architecture():
    assert set(list_models()) == set(EXPECTED_NAMES)


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_shapes_names_and_features(name):
    channels = 1 if name.startswith("lenet") else 3
    model = create_model(name, num_classes=7, in_channels=channels).eval()
    x = torch.randn(2, channels, 32, 32)
    logits, feats = model(x, return_features=True)
    assert logits.shape == (2, 7) and feats.dim() == 2 and feats.shape[0] == 2
    assert torch.equal(model(x), logits)
    keys = model.state_dict().keys()
    for key in EXPECTED_NAMES[name]:
        assert key in keys, key
    if name in PARAMS:
        assert sum(p.numel() for p in model.parameters()) == PARAMS[name] - _head_delta(name)


def _head_delta(name):
    # Parameter counts above are for 10 classes; we built 7.
    head_in = {"lenet5": 84, "lenet5_half": 42, "resnet18": 512, "wrn16_1": 64, "wrn40_2": 128}
    return 3 * (head_in[name] + 1)


def test_unknown_model_suggests_a_name():
    with pytest.raises(DfkdError, match="Did you mean 'resnet18'"):
        create_model("resnet81")


def test_checkpoint_round_trip(tmp_path):
    model = create_model("lenet5_half", 10, 1)
    meta = {"arch": "lenet5_half", "dataset": "fashion_mnist", "num_classes": 10,
            "image_shape": [1, 32, 32], "test_acc1": 12.5}
    save_model_checkpoint(tmp_path / "m.pt", model, meta)
    loaded, meta2 = load_model_checkpoint(tmp_path / "m.pt")
    assert meta2["test_acc1"] == 12.5
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary file


def test_zoo_checkpoint_needs_and_uses_its_architecture(tmp_path):
    model = create_model("wrn16_1", 10, 3)
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}},
               tmp_path / "zoo.pt")
    with pytest.raises(CheckpointError, match="--teacher-model"):
        load_model_checkpoint(tmp_path / "zoo.pt")
    loaded, _ = load_model_checkpoint(tmp_path / "zoo.pt", arch="wrn16_1", num_classes=10)
    assert torch.equal(loaded.fc.weight, model.fc.weight)
    with pytest.raises(CheckpointError, match="shape mismatch in conv1.weight|missing"):
        load_model_checkpoint(tmp_path / "zoo.pt", arch="wrn40_2", num_classes=10)


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/dfkd_pwned_by_checkpoint",))


def test_code_executing_pickle_is_refused(tmp_path):
    import os
    marker = "/tmp/dfkd_pwned_by_checkpoint"
    if os.path.exists(marker):
        os.remove(marker)
    torch.save({"state_dict": {}, "payload": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing to load"):
        safe_load(tmp_path / "evil.pt")
    assert not os.path.exists(marker)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    model = create_model("lenet5", 10, 1)
    save_model_checkpoint(tmp_path / "m.pt", model, {"arch": "lenet5", "num_classes": 10})
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        safe_load(tmp_path / "cut.pt")
