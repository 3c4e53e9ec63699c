"""Supervised training on real data: teachers, and the data-driven references
(the student from scratch, and the student distilled by plain KD on the real
training set). They train on the ``train`` split, which leaves out the validation
images; the val and test sets are only measured, once, at the end."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dfkd.checkpoint import load_model_checkpoint, save_model_checkpoint
from dfkd.data import augment, dataset_info, load_split
from dfkd.data.normalization import resolve_normalization
from dfkd.errors import DfkdError
from dfkd.losses import kd_kl
from dfkd.metrics import accuracy, predict
from dfkd.models import create_model, resolve_spec
from dfkd.run.device import resolve_device
from dfkd.run.seeding import seed_everything


@dataclass
class SupervisedSettings:
    dataset: str = "fashion_mnist"
    model: str = "lenet5"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_noise: float = 0.0          # fraction of training labels flipped at random
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None
    download: bool = False
    kd_from: str | None = None        # teacher checkpoint: train by KD on real data instead
    kd_norm: Any = None               # its input normalisation (dfkd.data.normalization)
    kd_tau: float = 4.0


def flip_labels(labels: torch.Tensor, rate: float, num_classes: int,
                generator: torch.Generator) -> torch.Tensor:
    """Flip exactly round(rate * N) labels, each to a different class chosen uniformly."""
    if not 0.0 <= rate < 1.0:
        raise DfkdError(f"--label-noise must be in [0, 1), got {rate}")
    n_flip = round(rate * len(labels))
    idx = torch.randperm(len(labels), generator=generator)[:n_flip]
    # An offset in 1..K-1 guarantees the new label differs from the old one.
    offset = torch.randint(1, num_classes, (n_flip,), generator=generator)
    noisy = labels.clone()
    noisy[idx] = (labels[idx] + offset) % num_classes
    return noisy


def normalizer(mean, std, device: torch.device):
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return lambda x: (x.float() / 255.0 - m) / s


def evaluate_checkpoint(path: str, dataset: str | None = None, data_root: str | None = None,
                        device: str = "auto", batch_size: int = 1024,
                        model: str | None = None, split: str = "test",
                        norm: Any = None) -> dict[str, Any]:
    """Acc@1 (and Acc@5 with more than 5 classes) of a checkpoint on ``split``.

    ``path``: a model checkpoint (``.pt`` or ``.safetensors``) or a run folder of
    ``dfkd distill``, whose ``student.pt`` is evaluated. ``norm``: its input normalisation
    (:mod:`dfkd.data.normalization`; by default the checkpoint's own, the CIFAR zoo's for a
    bare CIFAR state dict, else the dataset's)."""
    dev = resolve_device(device)
    # One read of the file: a named dataset sizes a zoo model; otherwise the
    # checkpoint's own metadata names both the model and its dataset.
    info = dataset_info(dataset) if dataset else None
    net, meta = load_model_checkpoint(
        path, arch=model, num_classes=info.num_classes if info else None,
        in_channels=info.image_shape[0] if info else None)
    if info is None:
        if not meta.get("dataset"):
            raise DfkdError(f"'{path}' does not name its dataset; pass --dataset NAME")
        info = dataset_info(meta["dataset"])
    images, labels = load_split(info.name, split, data_root)
    normalization = resolve_normalization(norm, meta, info)
    logits = predict(net.to(dev), images, batch_size,
                     normalizer(normalization.mean, normalization.std, dev), dev)
    return {"checkpoint": str(path), "arch": meta["arch"], "dataset": info.name, "split": split,
            **accuracy(logits, labels), "normalization": normalization.to_dict()}


def train_supervised(settings: SupervisedSettings, out: str | Path | None = None,
                     progress: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train ``settings.model`` on the ``train`` split with SGD + cosine schedule."""
    s = settings
    if s.epochs < 1 or s.batch_size < 1 or s.lr <= 0:
        raise DfkdError("--epochs and --batch-size must be >= 1 and --lr > 0")
    device = resolve_device(s.device)
    seed_everything(s.seed)
    info = dataset_info(s.dataset)
    train_x, train_y = load_split(info.name, "train", s.data_root, s.download)
    val_x, val_y = load_split(info.name, "val", s.data_root, s.download)
    test_x, test_y = load_split(info.name, "test", s.data_root, s.download)
    gen = torch.Generator().manual_seed(s.seed)
    if s.label_noise:
        train_y = flip_labels(train_y, s.label_noise, info.num_classes, gen)
    model = create_model(s.model, info.num_classes, info.image_shape[0]).to(device)
    kd_teacher = None
    norm = normalizer(info.mean, info.std, device)
    if s.kd_from:
        kd_teacher, kd_meta = load_model_checkpoint(s.kd_from, unnamed_error=(
            f"--kd-from {s.kd_from}: the teacher to learn from must be a dfkd checkpoint "
            "that names its architecture (a train-teacher .pt, or a distill run's "
            "student.pt); this one does not"))
        kd_teacher.to(device).eval().requires_grad_(False)
        # The teacher sees the images under its own normalisation, the student under the
        # dataset's (dfkd.data.normalization).
        kd_norm = resolve_normalization(s.kd_norm, kd_meta, info)
        teacher_norm = normalizer(kd_norm.mean, kd_norm.std, device)
    steps_per_epoch = len(train_x) // s.batch_size
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum,
                          weight_decay=s.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=s.lr, total_steps=s.epochs * steps_per_epoch, pct_start=0.15,
        anneal_strategy="cos")
    start = time.perf_counter()
    bar = tqdm(total=s.epochs * steps_per_epoch, disable=not progress, unit="step",
               desc=f"train {s.model}", dynamic_ncols=True)
    for epoch in range(s.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * s.batch_size:(i + 1) * s.batch_size]
            # Augment in pixel units (zero padding = black), then normalise.
            pixels = augment(train_x[idx].to(device).float(), info, generator=gen)
            y = train_y[idx].to(device)
            logits = model(norm(pixels))
            if kd_teacher is None:
                loss = F.cross_entropy(logits, y)
            else:
                with torch.no_grad():
                    t = kd_teacher(teacher_norm(pixels))
                loss = kd_kl(logits, t, s.kd_tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if i % 50 == 0:
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
            bar.update(1)
        if not progress:  # no bar: one line per epoch instead, as distill prints
            print(f"train {s.model}: epoch {epoch + 1}/{s.epochs}, loss {loss.item():.3f}, "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    bar.close()
    train_seconds = time.perf_counter() - start
    acc1 = accuracy(predict(model, test_x, 1024, norm, device), test_y)["acc1"]
    val_acc1 = accuracy(predict(model, val_x, 1024, norm, device), val_y)["acc1"]
    meta = {
        "arch": resolve_spec(s.model), "dataset": info.name, "num_classes": info.num_classes,
        "image_shape": list(info.image_shape), "mean": list(info.mean), "std": list(info.std),
        "test_acc1": acc1, "val_acc1": val_acc1, "train_seconds": round(train_seconds, 1),
        "settings": asdict(s), "dfkd_kind": "kd_with_data" if s.kd_from else "supervised",
    }
    if out is not None:
        save_model_checkpoint(out, model, meta)
    return model, meta
