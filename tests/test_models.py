"""Model zoo: output shapes, zoo parameter names, features, checkpoint round trip."""

import pytest
import torch
import torch.nn.functional as F

from dfkd.checkpoint import (
    load_model_checkpoint,
    load_state_dict_strict,
    safe_load,
    save_model_checkpoint,
)
from dfkd.errors import CheckpointError, DfkdError
from dfkd.models import create_model, list_models

EXPECTED_NAMES = {
    "lenet5": ["conv1.weight", "bn1.weight", "conv3.weight", "bn3.running_var", "fc2.bias"],
    "lenet5_half": ["conv1.weight", "bn2.running_mean", "fc1.weight", "fc2.weight"],
    "resnet18": ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight",
                 "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_var",
                 "layer4.1.bn2.weight", "linear.weight"],
    "resnet34": ["layer3.5.conv2.weight", "layer4.2.bn2.bias", "linear.bias"],
    "resnet18_tiny": ["conv1.bias", "layer2.0.downsample.0.weight", "fc.weight"],
    "resnet34_tiny": ["conv1.weight", "conv1.bias", "layer4.0.downsample.1.running_var",
                      "layer3.5.bn2.weight", "fc.bias"],
    "resnet18_imagenet": ["conv1.weight", "layer3.0.downsample.1.weight", "fc.weight"],
    "resnet34_imagenet": ["layer2.3.conv2.weight", "fc.bias"],
    "wrn16_1": ["conv1.weight", "block1.layer.0.bn1.weight", "block2.layer.0.convShortcut.weight",
                "block3.layer.1.conv2.weight", "bn1.running_mean", "fc.weight"],
    "wrn16_2": ["block1.layer.0.convShortcut.weight", "fc.bias"],
    "wrn40_1": ["block3.layer.5.conv2.weight", "fc.weight"],
    "wrn40_2": ["block1.layer.5.bn2.running_var", "fc.weight"],
    "vgg11_bn": ["block0.0.weight", "block0.1.running_mean", "block2.3.weight",
                 "block4.4.running_var", "classifier.weight"],
}
# With 10 classes. resnet34_tiny: the CIFAR ResNet-34's 21,282,122 plus the stem's 64 biases;
# resnet18_imagenet: torchvision's 11,689,512 with a 10-way head (-990 * 513); vgg11_bn:
# 9,220,480 in the convolutions, 5,504 in the BNs and a 5,130-parameter head.
PARAMS = {"lenet5": 61990, "lenet5_half": 15880, "resnet18": 11173962, "wrn16_1": 175066,
          "wrn40_2": 2243546, "resnet34_tiny": 21282186, "resnet18_imagenet": 11181642,
          "vgg11_bn": 9231114}


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
    head_in = {"lenet5": 84, "lenet5_half": 42, "wrn16_1": 64, "wrn40_2": 128}
    return 3 * (head_in.get(name, 512) + 1)


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


# ------------------------------------------------------------------ zoo layouts, by hand
def _bn_state(prefix: str, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1 + 0.1 * torch.randn(n, generator=g),
            f"{prefix}.bias": 0.1 * torch.randn(n, generator=g),
            f"{prefix}.running_mean": 0.1 * torch.randn(n, generator=g),
            f"{prefix}.running_var": 0.5 + torch.rand(n, generator=g),
            f"{prefix}.num_batches_tracked": torch.tensor(7)}


def _conv(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    fan_in = shape[1] * shape[2] * shape[3]
    return torch.randn(*shape, generator=g) * (2.0 / fan_in) ** 0.5


def _bn(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"],
                        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], False, 0.0, 1e-5)


def _torchvision_resnet_state(blocks: list[int], num_classes: int, stem: str,
                              seed: int = 0) -> dict[str, torch.Tensor]:
    """The keys and shapes of torchvision's ResNet (``downsample``, ``fc``), with the
    official CuDFKD Tiny-ImageNet teacher's stem ``nn.Conv2d(3, 64, 3, 1, 1)`` (bias on)
    when ``stem == "tiny"``."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    if stem == "tiny":
        sd["conv1.weight"] = _conv((64, 3, 3, 3), g)
        sd["conv1.bias"] = 0.1 * torch.randn(64, generator=g)
    else:
        sd["conv1.weight"] = _conv((64, 3, 7, 7), g)
    sd.update(_bn_state("bn1", 64, g))
    in_planes = 64
    for i, (n, planes) in enumerate(zip(blocks, [64, 128, 256, 512]), 1):
        for j in range(n):
            p = f"layer{i}.{j}"
            sd[f"{p}.conv1.weight"] = _conv((planes, in_planes, 3, 3), g)
            sd.update(_bn_state(f"{p}.bn1", planes, g))
            sd[f"{p}.conv2.weight"] = _conv((planes, planes, 3, 3), g)
            sd.update(_bn_state(f"{p}.bn2", planes, g))
            if j == 0 and i > 1:
                sd[f"{p}.downsample.0.weight"] = _conv((planes, in_planes, 1, 1), g)
                sd.update(_bn_state(f"{p}.downsample.1", planes, g))
            in_planes = planes
    sd["fc.weight"] = 0.05 * torch.randn(num_classes, 512, generator=g)
    sd["fc.bias"] = 0.1 * torch.randn(num_classes, generator=g)
    return sd


def _torchvision_resnet_forward(sd: dict, x: torch.Tensor, blocks: list[int],
                                stem: str) -> torch.Tensor:
    """torchvision's ResNet forward, written out with functional ops from the state dict."""
    if stem == "tiny":
        x = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], sd["conv1.bias"], 1, 1), sd, "bn1"))
    else:
        x = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], None, 2, 3), sd, "bn1"))
        x = F.max_pool2d(x, 3, 2, 1)
    for i, n in enumerate(blocks, 1):
        for j in range(n):
            p, stride = f"layer{i}.{j}", 2 if j == 0 and i > 1 else 1
            out = F.relu(_bn(F.conv2d(x, sd[f"{p}.conv1.weight"], None, stride, 1), sd,
                             f"{p}.bn1"))
            out = _bn(F.conv2d(out, sd[f"{p}.conv2.weight"], None, 1, 1), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = _bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], None, stride), sd,
                        f"{p}.downsample.1")
            x = F.relu(out + x)
    return F.linear(x.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"])


@pytest.mark.parametrize("arch, blocks, stem", [
    ("resnet34_tiny", [3, 4, 6, 3], "tiny"),         # the official Tiny-ImageNet teacher
    ("resnet18_imagenet", [2, 2, 2, 2], "imagenet"),  # the official Tiny-ImageNet student
])
def test_torchvision_layout_resnets_load_and_match_a_reference(tmp_path, arch, blocks, stem):
    sd = {k: v.double() if v.is_floating_point() else v
          for k, v in _torchvision_resnet_state(blocks, 200, stem).items()}
    # As the official code saves it: DataParallel/DDP's 'module.' prefix, under 'state_dict'.
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "t.pt")
    model, _ = load_model_checkpoint(tmp_path / "t.pt", arch=arch, num_classes=200)
    assert set(model.state_dict()) == set(sd)  # exactly the original's names
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    logits = model.double().eval()(x)
    expected = _torchvision_resnet_forward(sd, x, blocks, stem)
    assert logits.shape == (2, 200)
    assert torch.allclose(logits, expected, rtol=1e-9, atol=1e-9)
    assert expected.std() > 0.1  # the reference is not degenerate


_VGG11_ZOO = {  # RepDistiller/CMI/CuDFKD vgg11_bn: block -> (conv index, in, out) pairs
    "block0": [(0, 3, 64)], "block1": [(0, 64, 128)], "block2": [(0, 128, 256), (3, 256, 256)],
    "block3": [(0, 256, 512), (3, 512, 512)], "block4": [(0, 512, 512), (3, 512, 512)],
}


def _vgg_zoo_state(num_classes: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    for block, convs in _VGG11_ZOO.items():
        for idx, cin, cout in convs:
            sd[f"{block}.{idx}.weight"] = _conv((cout, cin, 3, 3), g)
            sd[f"{block}.{idx}.bias"] = 0.1 * torch.randn(cout, generator=g)
            sd.update(_bn_state(f"{block}.{idx + 1}", cout, g))
    sd["classifier.weight"] = 0.05 * torch.randn(num_classes, 512, generator=g)
    sd["classifier.bias"] = 0.1 * torch.randn(num_classes, generator=g)
    return sd


def _vgg_zoo_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """The zoo's forward: ReLU after each conv-BN, max-pool after blocks 0-2 (and after
    block 3 only for 64x64 inputs), global average pool, classifier."""
    side = x.shape[2]
    for b, (block, convs) in enumerate(_VGG11_ZOO.items()):
        for idx, _, _ in convs:
            x = F.conv2d(x, sd[f"{block}.{idx}.weight"], sd[f"{block}.{idx}.bias"], 1, 1)
            x = F.relu(_bn(x, sd, f"{block}.{idx + 1}"))
        if b < 3 or (b == 3 and side == 64):
            x = F.max_pool2d(x, 2)
    return F.linear(x.mean(dim=(2, 3)), sd["classifier.weight"], sd["classifier.bias"])


@pytest.mark.parametrize("side", [32, 64])
def test_vgg11_bn_loads_the_zoo_layout_and_matches_its_forward(side):
    sd = {k: v.double() if v.is_floating_point() else v for k, v in _vgg_zoo_state(10).items()}
    model = create_model("vgg11_bn", 10, 3)
    load_state_dict_strict(model, sd, "zoo vgg11")
    assert set(model.state_dict()) == set(sd)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    logits, feats = model.double().eval()(x, return_features=True)
    assert feats.shape == (2, 512)
    expected = _vgg_zoo_forward(sd, x)
    assert torch.allclose(logits, expected, rtol=1e-9, atol=1e-9)
    assert expected.std() > 0.1
