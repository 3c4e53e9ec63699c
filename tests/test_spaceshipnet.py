"""SpaceshipNet: the generator's levels, feature exchange, each loss term by hand (the
generator's CE and BN terms, the student's KL, CAM and Grad-CAM terms), the banks, the
warnings of terms a model cannot have, and a differential test against the official code
when it is at hand."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfkd.api import build_trainer
from dfkd.config import load_config
from dfkd.errors import ConfigError
from dfkd.frozen_teacher import FrozenTeacher
from dfkd.generators import Generator, GeneratorConfig
from dfkd.hooks import batchnorm_layers
from dfkd.methods.base import MethodContext
from dfkd.methods.spaceshipnet import (
    LevelGenerator,
    SpaceshipNet,
    SpaceshipNetSettings,
    class_balanced,
    exchange_channels,
    kaiming_init,
)
from dfkd.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def fmnist_trainer(teacher, tmp_path, **settings):
    raw = {"epochs": 2, "rounds": 1, "g_steps": 3, "kd_steps": 2, "batch_size": 8,
           "sample_grid": 0, "method": "spaceshipnet", "teacher": str(teacher),
           "spaceshipnet": {"w_cam": 0.0, **settings}}
    return build_trainer(raw, tmp_path, progress=False)


def resnet_method(batch: int = 4, **settings) -> SpaceshipNet:
    """SpaceshipNet on a CIFAR-shaped ResNet-18 pair (random weights, BN statistics moved
    off their defaults so the BN term is not trivial), outside any trainer."""
    torch.manual_seed(0)
    teacher, student = create_model("resnet18", 10, 3), create_model("resnet18", 10, 3)
    teacher.train()
    with torch.no_grad():
        teacher(torch.randn(16, 3, 32, 32))
    ctx = MethodContext(
        teacher=FrozenTeacher(teacher), student=student, student_raw=student, num_classes=10,
        image_shape=(3, 32, 32), mean=torch.full((1, 3, 1, 1), 0.5),
        std=torch.full((1, 3, 1, 1), 0.25), device=torch.device("cpu"), batch_size=batch,
        epochs=1, generator=GeneratorConfig(nz=16, ngf=8, width=2, stages=2))
    return SpaceshipNet(ctx, SpaceshipNetSettings(**settings))


def synthesise(method: SpaceshipNet, steps: int = 1) -> None:
    """One round's synthesis: ``steps`` generator steps, the best maps into the banks."""
    method.start_synthesis()
    for _ in range(steps):
        method.generator_step()
    method.end_synthesis()


# ------------------------------------------------------------------ the generator
def test_maps_of_every_level_render_back_to_the_same_images():
    """Level 0 is the projected input after its BN, level j stage j's output; G in eval mode
    renders stored maps of level k from k on into G(z)'s own images."""
    torch.manual_seed(0)
    g = LevelGenerator(Generator(16, 8, (3, 32, 32), width=2, stages=2)).eval()
    z = torch.randn(5, 16)
    with torch.no_grad():
        images, maps = g(z)
        torch.testing.assert_close(images, g.generator(z))
        assert [tuple(m.shape[1:]) for m in maps] == [(16, 8, 8), (16, 16, 16), (8, 32, 32)]
        for level, m in enumerate(maps):
            torch.testing.assert_close(g.render(m, level), images)


def test_kaiming_initialisation_is_the_official_one():
    torch.manual_seed(0)
    g = Generator(64, 64, (3, 32, 32), width=2, stages=2)
    kaiming_init(g)
    conv = g.body[2]
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)
    assert g.project.bias.abs().max() == 0
    bn = g.body[0]
    assert abs(bn.weight.mean().item() - 1) < 0.01 and 0.01 < bn.weight.std().item() < 0.03


def test_targets_are_every_class_in_turn():
    assert class_balanced(23, 10).tolist() == list(range(10)) * 2 + [0, 1, 2]


def test_feature_exchange_keeps_half_of_each_samples_channels_by_hand():
    torch.manual_seed(0)
    maps = torch.randn(5, 6, 2, 2)
    mixed = exchange_channels(maps)
    for i in range(5):
        own = [(mixed[i, c] == maps[i, c]).all().item() for c in range(6)]
        other = [(mixed[i, c] == maps[4 - i, c]).all().item() for c in range(6)]
        if i == 2:  # the middle sample meets itself
            assert all(own)
            continue
        assert sum(own) == 3 and all(o or t for o, t in zip(own, other))


def test_a_generator_step_is_its_terms_by_hand(fmnist_teacher, tmp_path):
    """0.5 CE(T(x), y) + 1 R_BN(x) on x = normalize(G(z)) (no crop, no flip), each term
    computed again from the same weights and codes."""
    trainer = fmnist_trainer(fmnist_teacher, tmp_path, padding=0, flip=False)
    method, ctx = trainer.method, trainer.method.ctx
    method.start_synthesis()
    weights = {k: v.clone() for k, v in method.generator.state_dict().items()}
    terms = method.generator_step()
    method.generator.load_state_dict(weights)
    captured = []
    hooks = [m.register_forward_hook(lambda m, i, o: captured.append((m, i[0].detach())))
             for m in batchnorm_layers(ctx.teacher)]
    with torch.no_grad():
        t = ctx.teacher(ctx.normalize(method.generator.generator(method.z)))
    for h in hooks:
        h.remove()
    bn = sum(torch.linalg.norm(m.running_var - f.transpose(0, 1).flatten(1).var(1, unbiased=False))
             + torch.linalg.norm(m.running_mean - f.transpose(0, 1).flatten(1).mean(1))
             for m, f in captured)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    ce = -(t.log_softmax(1)[torch.arange(8), y]).mean()
    torch.testing.assert_close(terms["g_bn"], bn, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["g_ce"], ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["loss_g"], 0.5 * ce + bn, rtol=1e-5, atol=1e-5)


def test_each_level_bank_gets_the_lowest_loss_steps_maps(fmnist_teacher, tmp_path):
    trainer = fmnist_trainer(fmnist_teacher, tmp_path)
    method = trainer.method
    method.start_synthesis()
    losses, maps = [], []
    for _ in range(3):
        state = {k: v.clone() for k, v in method.generator.state_dict().items()}
        rng = torch.get_rng_state()
        losses.append(method.generator_step()["loss_g"].item())
        after = {k: v.clone() for k, v in method.generator.state_dict().items()}
        method.generator.load_state_dict(state)   # the maps this step's forward made
        with torch.no_grad():
            maps.append(method.generator(method.z)[1])
        method.generator.load_state_dict(after)
        torch.set_rng_state(rng)
    method.end_synthesis()
    best = min(range(3), key=losses.__getitem__)
    assert sorted(method.banks) == [0, 1, 2]
    for level, bank in method.banks.items():
        assert len(bank) == 8
        torch.testing.assert_close(bank.latest(8), maps[best][level], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the student's loss
def test_the_student_loss_is_its_terms_by_hand():
    """KL / C at T 30, the CAM MSE (classifier weight as a 1x1 conv on the pooled map) and
    the Grad-CAM MSE summed over the four stage ends, computed again with plain hooks."""
    method = resnet_method(padding=0, flip=False)
    ctx = method.ctx
    synthesise(method, steps=2)
    rng = torch.get_rng_state()
    loss, terms = method.student_loss()
    torch.set_rng_state(rng)
    x = method.student_batch()

    stages = ["layer1", "layer2", "layer3", "layer4"]

    def forward(model, inputs):
        kept = {}
        modules = dict(model.named_modules())
        hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: kept.__setitem__(n, o))
                 for n in stages]
        out = model(inputs)
        for h in hooks:
            h.remove()
        return out, [kept[n] for n in stages]

    teacher = ctx.teacher.model
    t, maps_t = forward(teacher, x.clone().requires_grad_())
    s, maps_s = forward(ctx.student_raw, x)
    onehot = F.one_hot(t.argmax(1), 10).float()
    g_t = torch.autograd.grad((t * onehot).sum(), maps_t)
    g_s = torch.autograd.grad((s * onehot).sum(), maps_s, retain_graph=True)
    gradcam = sum(F.mse_loss((gs.mean((2, 3))[:, :, None, None] * a).sum(1),
                             (gt.mean((2, 3))[:, :, None, None] * b).sum(1).detach())
                  for gs, a, gt, b in zip(g_s, maps_s, g_t, maps_t))
    cam_t = F.conv2d(maps_t[-1], teacher.linear.weight[:, :, None, None]).detach()
    cam_s = F.conv2d(maps_s[-1], ctx.student_raw.linear.weight.detach()[:, :, None, None])
    cam = F.mse_loss(cam_s, cam_t)
    p_t = F.softmax(t.detach() / 30, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / 30, 1))).sum() / (4 * 10) * 900
    torch.testing.assert_close(terms["kd"], kl.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["cam"], cam.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["gradcam"], gradcam.detach(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(loss.detach(), (kl + cam + gradcam).detach(), rtol=1e-4,
                               atol=1e-6)
    loss.backward()
    assert ctx.student_raw.layer1[0].conv1.weight.grad.abs().sum() > 0


def test_student_batches_come_from_one_level_exchanged_as_often_as_asked(fmnist_teacher,
                                                                           tmp_path):
    trainer = fmnist_trainer(fmnist_teacher, tmp_path, levels=[1], exchange_p=0.0,
                             padding=0, flip=False)
    method = trainer.method
    synthesise(method)
    assert list(method.banks) == [1]
    # p 0: the bank's own maps, rendered from level 1
    torch.manual_seed(0)
    torch.randint(1, ())   # the level
    rows = torch.randint(8, (8,))
    torch.manual_seed(0)
    x = method.student_batch()
    expected = method.ctx.normalize(method.render(method.banks[1].data[rows], 1))
    torch.testing.assert_close(x, expected)


def test_student_batches_are_rendered_then_cropped_and_flipped(fmnist_teacher, tmp_path,
                                                               monkeypatch):
    import dfkd.methods.spaceshipnet as module
    method = fmnist_trainer(fmnist_teacher, tmp_path).method
    synthesise(method)
    calls, original = [], module.random_crop_flip

    def spy(images, padding, flip=True):
        out = original(images, padding, flip)
        calls.append((images, padding, flip, out))
        return out

    monkeypatch.setattr(module, "random_crop_flip", spy)
    x = method.student_batch()
    (images, padding, flip, out), = calls
    assert (padding, flip) == (4, True) and images.shape == (8, 1, 32, 32)
    assert 0 <= images.min() and images.max() <= 1   # G's sigmoid output
    torch.testing.assert_close(x, method.ctx.normalize(out))


def test_a_model_without_a_class_activation_map_gets_one_warning(fmnist_teacher, tmp_path,
                                                                 capsys):
    """LeNet-5's classifier is an MLP on a 1x1 map: with w_cam > 0 the term is skipped, said
    once; the Grad-CAM pairs (28x28, 10x10) remain."""
    trainer = fmnist_trainer(fmnist_teacher, tmp_path, w_cam=1.0)
    err = capsys.readouterr().err
    assert err.count("the CAM term is skipped") == 1 and "spaceshipnet.w_cam=0" in err
    method = trainer.method
    assert method.cam is None
    assert [t for t, _ in method.gradcam.layers] == ["bn1", "bn2"]
    synthesise(method)
    terms = method.student_loss()[1]
    assert "gradcam" in terms and "cam" not in terms


def test_levels_beyond_the_generator_are_one_line(fmnist_teacher, tmp_path):
    with pytest.raises(ConfigError, match="levels 0..2"):
        fmnist_trainer(fmnist_teacher, tmp_path, levels=[0, 3])
    with pytest.raises(ConfigError, match="non-empty list"):
        load_config({"method": "spaceshipnet", "spaceshipnet": {"levels": []}})


# ------------------------------------------------------------------ the official code
def official_root() -> Path:
    """The official checkout's ``code/SpaceshipNet`` folder, named by
    DFKD_OFFICIAL_SPACESHIPNET (the repository's root), or a skip."""
    root = os.environ.get("DFKD_OFFICIAL_SPACESHIPNET")
    folder = Path(root or "") / "code" / "SpaceshipNet"
    if not root or not (folder / "networks" / "cmi_generator.py").is_file():
        pytest.skip("set DFKD_OFFICIAL_SPACESHIPNET to a checkout of skgyu/SpaceshipNet")
    return folder


def official_functions(folder: Path, names: tuple[str, ...]) -> dict:
    """The official model file's module-level functions ``names``, run as written: the file
    itself imports kornia, timm and lmdb, which these functions do not use."""
    path = folder / "models" / "model_CFE_mSARC_bases" / "model_CFE_mSARC_base_V37.py"
    tree = ast.parse(path.read_text())
    module = ast.Module([n for n in tree.body if isinstance(n, ast.FunctionDef)
                         and n.name in names], type_ignores=[])
    namespace = {"torch": torch, "nn": nn, "F": F}
    exec(compile(module, str(path), "exec"), namespace)
    return namespace


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")   # the official KLDivLoss()
def test_the_generator_and_the_student_terms_equal_the_official_code(monkeypatch):
    """Same weights, same inputs: CMIGeneratorV3's images, maps and generate_using_convout;
    ResNet18_1028 -> ResNet18_1028's KL (KLDivLoss x T^2), CAM (cope_fclikeconv) and
    Grad-CAM (gradcam_cope) terms equal dfkd's within 1e-5."""
    folder = official_root()
    monkeypatch.syspath_prepend(str(folder))
    for name in [m for m in sys.modules if m == "networks" or m.startswith("networks.")]:
        monkeypatch.delitem(sys.modules, name)
    import networks.cmi_generator as official_generator
    import networks.resnet_cifar_1028 as official_resnet

    torch.manual_seed(0)
    theirs = official_generator.CMIGeneratorV3(nz=16, ngf=8, img_size=32, nc=3)
    ours = LevelGenerator(Generator(16, 8, (3, 32, 32), width=2, stages=2))
    mapping = {"l1.0": "generator.project", "layer1": "generator.body.0",
               "conv_layer1.0": "generator.body.2", "conv_layer1.1": "generator.body.3",
               "conv_layer2.0": "generator.body.6", "conv_layer2.1": "generator.body.7",
               "conv_layer3.0": "generator.body.9"}
    state = {}
    for key, value in theirs.state_dict().items():
        prefix = max((p for p in mapping if key.startswith(p + ".")), key=len)
        state[mapping[prefix] + key[len(prefix):]] = value
    ours.load_state_dict(state)
    z = torch.randn(6, 16)
    img_t, maps_t = theirs(z)
    img_o, maps_o = ours(z)
    torch.testing.assert_close(img_o, img_t, rtol=0, atol=1e-5)
    for a, b in zip(maps_o, maps_t):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    theirs.eval(), ours.eval()
    with torch.no_grad():
        for level, m in enumerate(maps_t):
            torch.testing.assert_close(ours.render(m, level),
                                       theirs.generate_using_convout(m, level), rtol=0, atol=1e-5)

    # the student's terms on a ResNet-18 pair of the official networks (ResNet-34 is the
    # same code with more blocks)
    method = resnet_method(padding=0, flip=False)
    ctx = method.ctx
    t_official = official_resnet.ResNet18_1028(10)
    s_official = official_resnet.ResNet18_1028(10)
    t_official.load_state_dict(ctx.teacher.model.state_dict())
    s_official.load_state_dict(ctx.student_raw.state_dict())
    t_official.eval()
    synthesise(method)
    rng = torch.get_rng_state()
    _, terms = method.student_loss()
    torch.set_rng_state(rng)
    x = method.student_batch()

    fns = official_functions(folder, ("gradcam_cope", "cope_fclikeconv"))
    t_official.do_save_gradient()
    s_official.do_save_gradient()
    t_out, _, t_cam_feature, t_conv = t_official(x)
    s_out, _, s_cam_feature, s_conv = s_official(x)
    kl = nn.KLDivLoss()(F.log_softmax(s_out / 30, dim=1), F.softmax(t_out / 30, dim=1)) * 900
    conv_t = nn.Conv2d(512, 10, 1, bias=False)
    conv_s = nn.Conv2d(512, 10, 1, bias=False)
    cam = F.mse_loss(fns["cope_fclikeconv"](None, s_official, s_cam_feature, conv_s),
                     fns["cope_fclikeconv"](None, t_official, t_cam_feature, conv_t))
    onehot = F.one_hot(t_out.max(1)[1], num_classes=10)
    cams_t = fns["gradcam_cope"](None, t_official, t_conv, t_out, onehot, True)
    cams_s = fns["gradcam_cope"](None, s_official, s_conv, s_out, onehot, True)
    gradcam = sum(F.mse_loss(a, b) for a, b in zip(cams_s, cams_t))
    torch.testing.assert_close(terms["kd"], kl.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(terms["cam"], cam.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(terms["gradcam"], gradcam.detach(), rtol=0, atol=1e-5)
