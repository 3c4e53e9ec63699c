"""The bank-based methods (deepinv/ADI, cmi, fast): their terms by hand, the bank,
a short real run each and an exact resume with the bank in the checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import metrics_rows

from dfkd.api import build_trainer
from dfkd.checkpoint import safe_load
from dfkd.errors import ConfigError
from dfkd.losses import info_nce, total_variation
from dfkd.methods.bank import SampleBank, jitter
from dfkd.methods.deepinv import competition

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ loss terms by hand
def test_total_variation_by_hand():
    x = torch.tensor([[0.0, 1.0], [2.0, 4.0]]).view(1, 1, 2, 2)
    # right: (1, 2); down: (2, 3); lower-right: 4 - 0; upper-right: 1 - 2
    expected = math.sqrt(1 + 4) + math.sqrt(4 + 9) + 4 + 1
    assert total_variation(x).item() == pytest.approx(expected)
    assert total_variation(torch.full((3, 2, 5, 5), 0.7)).item() == 0


def test_info_nce_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # normalised inside: (1, 0), (0, 1)
    e = math.e
    # Without negatives the logits are the identity: each row -log(e / (e + 1)).
    assert info_nce(a, a, None, 1.0).item() == pytest.approx(math.log(1 + 1 / e), abs=1e-6)
    neg = torch.tensor([[3.0, 0.0]])
    row0 = -math.log(e / (e + 1 + e))   # logits (1, 0 | 1)
    row1 = -math.log(e / (1 + e + 1))   # logits (0, 1 | 0)
    assert info_nce(a, a, neg, 1.0).item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    # The temperature divides every logit.
    t = 0.5
    row0 = -math.log(e**2 / (e**2 + 1 + e**2))
    row1 = -math.log(e**2 / (1 + e**2 + 1))
    assert info_nce(a, a, neg, t).item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_adi_competition_by_hand():
    t = torch.tensor([[2.0, 0.0]])
    assert competition(t, t, 3.0).item() == pytest.approx(1.0)
    # One-hot-like distributions that disagree: JS -> ln 2.
    far = competition(torch.tensor([[-60.0, 60.0]]), torch.tensor([[60.0, -60.0]]), 1.0)
    assert far.item() == pytest.approx(1 - math.log(2), abs=1e-6)


# ------------------------------------------------------------------ the bank
def test_bank_is_bounded_first_in_first_out_and_round_trips():
    bank = SampleBank(5)
    with pytest.raises(RuntimeError, match="empty"):
        bank.sample(2)
    bank.add(torch.arange(3.0).view(3, 1))
    bank.add(torch.arange(3.0, 7.0).view(4, 1))
    assert len(bank) == 5
    assert bank.latest(5).flatten().tolist() == [2, 3, 4, 5, 6]  # 0 and 1 were dropped
    assert bank.latest(2).flatten().tolist() == [5, 6]
    drawn = bank.sample(100)
    assert drawn.shape == (100, 1) and set(drawn.flatten().tolist()) <= {2, 3, 4, 5, 6}
    copy = SampleBank(5)
    copy.load_state_dict(bank.state_dict(), torch.device("cpu"))
    assert torch.equal(copy.latest(5), bank.latest(5)) and copy.next == bank.next
    copy.add(torch.tensor([[7.0]]))
    assert copy.latest(5).flatten().tolist() == [3, 4, 5, 6, 7]
    bank.add(torch.arange(10.0, 18.0).view(8, 1))  # more than the capacity at once
    assert bank.latest(5).flatten().tolist() == [13, 14, 15, 16, 17]
    with pytest.raises(ConfigError, match="bank_size"):
        SampleBank(0)


def test_jitter_moves_pixels_without_changing_them():
    x = torch.arange(2 * 16.0).view(2, 1, 4, 4)
    torch.manual_seed(3)
    y = jitter(x, 2)
    assert torch.equal(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    assert torch.equal(jitter(x, 0, flip=False), x)


def test_bank_settings_are_checked():
    from dfkd.config import load_config
    with pytest.raises(ConfigError, match="cmi.cr_tau"):
        load_config({"method": "cmi", "cmi": {"cr_tau": 0}})
    with pytest.raises(ConfigError, match="deepinv.bank_size"):
        load_config({"method": "deepinv", "deepinv": {"bank_size": 0}})


# ------------------------------------------------------------------ real runs
SHORT = {
    "deepinv": {"rounds": 4, "g_steps": 30, "kd_steps": 25,
                "deepinv": {"w_adv": 1.0, "tau": 4.0}},
    "cmi": {"rounds": 4, "g_steps": 30, "kd_steps": 25, "generator": {"lr": 0.01},
            "cmi": {"tau": 4.0}},
    "fast": {"rounds": 20, "g_steps": 3, "kd_steps": 5, "fast": {"tau": 4.0}},
}


@pytest.mark.parametrize("method", ["deepinv", "cmi", "fast"])
def test_short_run_learns(fmnist_teacher, tmp_path, method):
    """100 student steps on the bank, from the real Fashion-MNIST teacher: well above
    chance (10%); the checkpoint holds the bank as float images in [0, 1]."""
    raw = {"epochs": 1, "batch_size": 64, "sample_grid": 0, **SHORT[method],
           "teacher": str(fmnist_teacher), "method": method}
    summary = build_trainer(raw, tmp_path, progress=False).fit()
    assert summary["final_agreement"] > 20, summary["final_agreement"]
    state = safe_load(tmp_path / "checkpoint.pt")["method"]
    bank = state["bank"]["data"]
    assert bank.dtype == torch.float32 and bank.shape == (raw["rounds"] * 64, 1, 32, 32)
    assert 0 <= bank.min() and bank.max() <= 1 and bank.std() > 0.05


@pytest.mark.parametrize("method", ["deepinv", "cmi", "fast"])
def test_resume_is_exact(fmnist_teacher, tmp_path, method):
    """Banks (and CMI's head and feature bank, Fast's meta generator) are in the
    checkpoint: a run stopped after epoch 2 and resumed matches an uninterrupted one."""
    raw = {"epochs": 3, "rounds": 2, "g_steps": 2, "kd_steps": 2, "batch_size": 16,
           "sample_grid": 4, "method": method, "teacher": str(fmnist_teacher),
           method: {"bank_size": 40}}  # 16 per round: the bank wraps around
    build_trainer(raw, tmp_path / "full", progress=False).fit()
    build_trainer(raw, tmp_path / "split", progress=False).fit(stop_after_epoch=2)
    resumed = build_trainer(raw, tmp_path / "split", resume=True, progress=False)
    assert len(resumed.method.bank) == 40
    resumed.fit()
    assert metrics_rows(tmp_path / "split") == \
        metrics_rows(tmp_path / "full")


def test_fast_reptile_moves_the_meta_generator_towards_the_round(fmnist_teacher, tmp_path):
    raw = {"epochs": 1, "rounds": 1, "g_steps": 3, "kd_steps": 1, "batch_size": 16,
           "sample_grid": 0, "method": "fast", "teacher": str(fmnist_teacher)}
    method = build_trainer(raw, tmp_path, progress=False).method
    before = {k: v.clone() for k, v in method.meta.state_dict().items()}
    method.start_synthesis()
    for _ in range(3):
        method.generator_step()
    fast = {k: v.detach().clone() for k, v in method.fast.state_dict().items()}
    method.end_synthesis()
    after = method.meta.state_dict()
    assert len(method.bank) == 16
    assert torch.equal(after["project.weight"], before["project.weight"])  # reset_l0
    # A convolution, learned by the meta generator: its first Adam step moves every weight
    # by meta_lr towards where the round's steps took it.
    name = "body.2.weight"
    moved, wanted = after[name] - before[name], fast[name] - before[name]
    assert torch.equal(moved.sign(), wanted.sign())
    assert moved.abs().max().item() == pytest.approx(method.settings.meta_lr, rel=1e-3)
