"""Tests of dfkd.data: readers on tiny files written here, the real Fashion-MNIST, augmentation."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dfkd.data import (
    DATASETS,
    augment,
    dataset_info,
    denormalize,
    find_dataset_dir,
    load_split,
    normalize,
    read_cifar_batch,
    read_idx,
    read_mat,
    read_mnist_split,
    read_pickle,
    read_tiny_imagenet_split,
    registry,
    search_dirs,
    val_indices,
)
from dfkd.errors import DatasetError

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def no_standard_dirs(tmp_path, monkeypatch):
    """Hide the system install and the user cache so only data_root can be found."""
    monkeypatch.setattr(registry, "SYSTEM_DIRS", {})
    monkeypatch.setattr(registry, "CACHE_ROOT", tmp_path / "cache")


# ---------------------------------------------------------------------------- real Fashion-MNIST
needs_fmnist = pytest.mark.skipif(
    registry.find_dataset_dir("fashion_mnist", "train") is None, reason="Fashion-MNIST missing"
)


@needs_fmnist
def official_train(name: str, data_root=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The official training set, put back together from the train and val splits."""
    x, y = load_split(name, "train", data_root=data_root)
    xv, yv = load_split(name, "val", data_root=data_root)
    n = len(y) + len(yv)
    held = torch.zeros(n, dtype=torch.bool)
    held[val_indices(name, n)] = True
    full_x, full_y = torch.empty((n, *x.shape[1:]), dtype=x.dtype), torch.empty(n, dtype=y.dtype)
    full_x[~held], full_y[~held], full_x[held], full_y[held] = x, y, xv, yv
    return full_x, full_y


def test_real_fashion_mnist():
    x, y = official_train("fashion_mnist")
    xt, yt = load_split("fashion_mnist", "test")
    assert x.shape == (60000, 1, 32, 32) and xt.shape == (10000, 1, 32, 32)
    assert x.dtype == torch.uint8 and y.dtype == torch.int64 and yt.dtype == torch.int64
    assert torch.equal(torch.bincount(y), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(yt), torch.full((10,), 1000))
    assert int(y[0]) == 9 and int(yt[0]) == 9  # both files start with an ankle boot
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert x[:, :, border].max() == 0 and xt[:, :, border].max() == 0
    # The published statistic of the unpadded 28x28 training images.
    assert x[:, :, 2:30, 2:30].double().div(255).mean().item() == pytest.approx(0.2860, abs=5e-5)
    train = load_split("fashion_mnist", "train")[0]
    assert load_split("fashion_mnist", "train")[0] is train  # cached in-process


@needs_fmnist
def test_fashion_mnist_stats_match_padded_data():
    info = dataset_info("fashion_mnist")
    x = load_split("fashion_mnist", "train")[0].double().div(255)
    assert info.image_shape == tuple(x.shape[1:])
    assert round(x.mean().item(), 3) == round(info.mean[0], 3)
    assert round(x.std().item(), 3) == round(info.std[0], 3)


# ------------------------------------------------------------------------------------- metadata
def test_dataset_info_and_unknown_name():
    assert DATASETS == ("fashion_mnist", "mnist", "cifar10", "cifar100", "svhn", "tiny_imagenet")
    for name in DATASETS:
        info = dataset_info(name)
        assert len(info.mean) == len(info.std) == info.image_shape[0]
    assert dataset_info("Fashion-MNIST").name == "fashion_mnist"
    assert not dataset_info("svhn").flip and dataset_info("cifar10").flip
    assert dataset_info("tiny_imagenet").image_shape == (3, 64, 64)
    with pytest.raises(DatasetError, match="Did you mean 'fashion_mnist'") as e:
        dataset_info("fashion_mnst")
    assert "cifar100" in str(e.value)
    with pytest.raises(DatasetError, match="split"):
        load_split("mnist", "val")


def test_explicit_data_root_without_the_dataset_is_an_error(tmp_path):
    # The system copy of Fashion-MNIST exists, but a named folder means that folder only.
    assert find_dataset_dir("fashion_mnist", "test") is not None
    with pytest.raises(DatasetError, match=f"--data-root {tmp_path} does not hold the "
                                           "fashion_mnist test split"):
        load_split("fashion_mnist", "test", data_root=tmp_path)
    assert search_dirs("fashion_mnist", tmp_path)[0] == tmp_path
    assert all(str(d).startswith(str(tmp_path)) for d in search_dirs("fashion_mnist", tmp_path))


def test_missing_dataset_message(tmp_path, no_standard_dirs):
    with pytest.raises(DatasetError) as e:
        load_split("fashion_mnist", "train", data_root=tmp_path)
    msg = str(e.value)
    for part in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", str(tmp_path),
                 "apt-get install dataset-fashion-mnist", "--data-root"):  # fmt: skip
        assert part in msg
    with pytest.raises(DatasetError) as e:
        load_split("cifar10", "test", data_root=tmp_path)
    for part in ("test_batch", "--data-root DIR", "--download", "cifar-10-batches-py"):
        assert part in str(e.value)


# -------------------------------------------------------------------------------------------- IDX
def idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_mnist(folder: Path, n: int, gz: bool, split: str = "train") -> tuple:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    for base, a in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
        data = idx_bytes(a)
        if gz:
            (folder / f"{base}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / base).write_bytes(data)
    return x, y


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip_and_mnist_padding(tmp_path, gz, no_standard_dirs):
    x, y = write_mnist(tmp_path / "MNIST" / "raw", 5, gz)
    xs, ys = read_mnist_split(tmp_path / "MNIST" / "raw", "train")
    assert np.array_equal(xs[:, 0], x) and np.array_equal(ys, y) and ys.dtype == np.int64
    images, labels = load_split("mnist", "train", data_root=tmp_path)  # finds MNIST/raw
    assert images.shape == (5, 1, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images[:, 0, 2:30, 2:30], torch.from_numpy(x))
    assert images[:, :, :2].max() == 0 and images[:, :, :, 30:].max() == 0
    assert torch.equal(labels, torch.from_numpy(y).long())


def test_idx_errors(tmp_path):
    good = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    cases = {
        "truncated-idx3-ubyte": (good[:-10], "payload"),
        "magic-idx3-ubyte": (b"\x00\x00\x09\x03" + good[4:], "magic"),
        "short-idx3-ubyte": (good[:10], "header"),
        "trunc-idx3-ubyte.gz": (gzip.compress(good)[:-20], "truncated or corrupt"),
        "garbage-idx3-ubyte.gz": (b"\x1f\x8b\x08\x00" + b"\xff" * 40, "truncated or corrupt"),
        "notgz-idx3-ubyte.gz": (good, "truncated or corrupt"),
    }
    for name, (data, what) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DatasetError, match=what) as e:
            read_idx(tmp_path / name, 3)
        assert name in str(e.value) and "download" in str(e.value)
    (tmp_path / "ok").write_bytes(good)
    with pytest.raises(DatasetError, match="dimensions"):
        read_idx(tmp_path / "ok", 1)
    # Image and label counts must agree.
    write_mnist(tmp_path / "m", 4, False, "test")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DatasetError, match="3 labels"):
        read_mnist_split(tmp_path / "m", "test")


# ------------------------------------------------------------------------------------------ CIFAR
def cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def test_cifar10(tmp_path, no_standard_dirs):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows = {f: cifar_rows(2, i) for i, f in enumerate([*(f"data_batch_{i}" for i in range(1, 6)),
                                                       "test_batch"])}  # fmt: skip
    for f, r in rows.items():
        batch = {b"batch_label": b"x", b"data": r, b"labels": [1, 9], b"filenames": [b"a", b"b"]}
        # Protocol 2 from Python 3 stores bytes via _codecs.encode, like re-saved archives.
        (folder / f).write_bytes(pickle.dumps(batch, protocol=2))
    for root in (tmp_path, folder):  # the parent folder or the batches folder itself
        assert len(load_split("cifar10", "val", data_root=root)[1]) == 1  # a tenth of 10
        x, y = official_train("cifar10", data_root=root)
        assert x.shape == (10, 3, 32, 32) and y.tolist() == [1, 9] * 5
        r = rows["data_batch_3"][1]
        for c in range(3):  # rows hold the R plane, then G, then B, each 32x32 row-major
            assert np.array_equal(x[5, c].numpy(), r[1024 * c : 1024 * (c + 1)].reshape(32, 32))
    xt, yt = load_split("cifar10", "test", data_root=tmp_path)
    assert np.array_equal(xt.reshape(2, -1).numpy(), rows["test_batch"])


def test_cifar100(tmp_path, no_standard_dirs):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    r = cifar_rows(3, 7)
    batch = {"data": r, "fine_labels": [0, 99, 42], "coarse_labels": [0, 1, 2]}
    (folder / "test").write_bytes(pickle.dumps(batch, protocol=5))  # str keys, protocol 5
    x, y = load_split("cifar100", "test", data_root=tmp_path)
    assert y.tolist() == [0, 99, 42]
    assert x[2, 1, 3, 4].item() == r[2, 1024 + 3 * 32 + 4]
    (folder / "test").write_bytes(pickle.dumps({**batch, "fine_labels": [0, 100, 1]}))
    with pytest.raises(DatasetError, match="labels"):
        load_split("cifar100", "test", data_root=folder)


class _Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"
    for payload in (_Evil(f"touch {marker}"), {b"data": _Evil(f"touch {marker}")}):
        path = tmp_path / "data_batch_1"
        path.write_bytes(pickle.dumps(payload))
        with pytest.raises(DatasetError, match="not allowed"):
            read_pickle(path)
        with pytest.raises(DatasetError, match="data_batch_1"):
            read_cifar_batch(path)
        assert not marker.exists()
    path.write_bytes(pickle.dumps(print))  # any other global, even a harmless one
    with pytest.raises(DatasetError, match="builtins.print"):
        read_pickle(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})[:-30])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        read_pickle(path)


# ------------------------------------------------------------------------------------------- SVHN
def mat_element(mi_type: int, payload: bytes, e: str) -> bytes:
    if len(payload) <= 4:  # small data element format
        sizes = (mi_type, len(payload)) if e == "<" else (len(payload), mi_type)
        return struct.pack(f"{e}HH", *sizes) + payload.ljust(4, b"\0")
    return struct.pack(f"{e}II", mi_type, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def mat_matrix(name: str, a: np.ndarray, mx_class: int, mi_type: int, e: str) -> bytes:
    values = a.astype(a.dtype.newbyteorder(e)).tobytes(order="F")  # column-major, like MATLAB
    body = (
        mat_element(6, struct.pack(f"{e}II", mx_class, 0), e)
        + mat_element(5, np.asarray(a.shape, f"{e}i4").tobytes(), e)
        + mat_element(1, name.encode(), e)
        + mat_element(mi_type, values, e)
    )
    return struct.pack(f"{e}II", 14, len(body)) + body


def write_mat(path: Path, variables: list[bytes], compress: bool, e: str) -> None:
    header = b"MATLAB 5.0 MAT-file, written by test_data.py".ljust(116) + b"\0" * 8
    header += struct.pack(f"{e}H", 0x0100) + (b"IM" if e == "<" else b"MI")
    body = b""
    for v in variables:
        if compress:
            z = zlib.compress(v)
            v = struct.pack(f"{e}II", 15, len(z)) + z  # compressed elements are not padded
        body += v
    path.write_bytes(header + body)


@pytest.mark.parametrize(("compress", "e"), [(False, "<"), (True, "<"), (False, ">"), (True, ">")])
def test_svhn_mat(tmp_path, compress, e, no_standard_dirs):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    y = np.array([[10], [1], [5], [10]], dtype=np.uint8)
    variables = [
        mat_matrix("X", x, 9, 2, e),  # uint8 class stored as miUINT8
        mat_matrix("y", y, 6, 2, e),  # double class stored compactly as miUINT8, like MATLAB
        mat_matrix("z", np.array([[1.5, -2.0]]), 6, 9, e),  # double stored as miDOUBLE
    ]
    write_mat(tmp_path / "test_32x32.mat", variables, compress, e)
    mat = read_mat(tmp_path / "test_32x32.mat")
    assert mat["X"].shape == (32, 32, 3, 4) and np.array_equal(mat["X"], x)
    assert mat["y"].dtype == np.float64 and mat["z"].tolist() == [[1.5, -2.0]]
    images, labels = load_split("svhn", "test", data_root=tmp_path)
    assert labels.tolist() == [0, 1, 5, 0]
    assert images.shape == (4, 3, 32, 32)
    assert images[2, 1, 7, 20].item() == x[7, 20, 1, 2]  # (H, W, C, N) -> (N, C, H, W)
    assert np.array_equal(images.numpy(), x.transpose(3, 2, 0, 1))


def test_mat_errors(tmp_path):
    x = np.zeros((32, 32, 3, 1), np.uint8)
    write_mat(tmp_path / "a.mat", [mat_matrix("X", x, 9, 2, "<")], True, "<")
    data = (tmp_path / "a.mat").read_bytes()
    (tmp_path / "cut.mat").write_bytes(data[:-50])
    with pytest.raises(DatasetError, match=r"cut\.mat"):
        read_mat(tmp_path / "cut.mat")
    (tmp_path / "bad.mat").write_bytes(data[:136] + b"\x00" * (len(data) - 136))
    with pytest.raises(DatasetError, match="compressed"):
        read_mat(tmp_path / "bad.mat")
    (tmp_path / "text.mat").write_bytes(b"hello" * 40)
    with pytest.raises(DatasetError, match="not a MATLAB"):
        read_mat(tmp_path / "text.mat")


# ---------------------------------------------------------------------------------- Tiny-ImageNet
def test_tiny_imagenet(tmp_path, no_standard_dirs):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    colours = {"n01443537": (200, 30, 60), "n01629819": (20, 180, 90)}
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        d = root / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), colours[w]).save(d / f"{w}_{i}.JPEG", quality=95)
    Image.new("L", (64, 64), 128).save(root / "train" / wnids[1] / "images" / "g.JPEG")
    lines = []
    for i, w in enumerate([wnids[1], wnids[0]]):
        Image.new("RGB", (64, 64), colours[w]).save(root / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")

    x, y = load_split("tiny_imagenet", "train", data_root=tmp_path)
    assert x.shape == (7, 3, 64, 64) and x.dtype == torch.uint8
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 1]
    means = x.float().mean(dim=(2, 3))
    assert torch.allclose(means[0], torch.tensor(colours[wnids[0]]).float(), atol=3)
    assert torch.allclose(means[6], torch.tensor(colours[wnids[1]]).float(), atol=3)
    assert torch.allclose(means[3], torch.full((3,), 128.0), atol=3)  # grayscale -> RGB
    xv, yv = read_tiny_imagenet_split(root, "test")
    assert xv.shape == (2, 3, 64, 64) and yv.tolist() == [1, 0]
    Image.new("RGB", (32, 32)).save(root / "val" / "images" / "val_0.JPEG")
    with pytest.raises(DatasetError, match="64x64"):
        read_tiny_imagenet_split(root, "test")


# ------------------------------------------------------------------------------------ transforms
def test_normalize_roundtrip():
    info = dataset_info("cifar10")
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    z = normalize(x, info)
    expected = (x.float() / 255 - torch.tensor(info.mean).view(3, 1, 1)) / torch.tensor(
        info.std
    ).view(3, 1, 1)
    assert torch.allclose(z, expected)
    assert torch.allclose(denormalize(z, info), x.float() / 255, atol=1e-6)


def test_augment_deterministic_and_matches_reference():
    info = dataset_info("cifar10")
    x = torch.rand(16, 3, 32, 32)
    a = augment(x, info, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, augment(x, info, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, augment(x, info, torch.Generator().manual_seed(4)))
    # Reference: the same draws (dy, dx, flip) applied one sample at a time.
    g = torch.Generator().manual_seed(3)
    p = info.crop_padding
    dy, dx = (torch.randint(0, 2 * p + 1, (16,), generator=g) for _ in range(2))
    flip = torch.rand(16, generator=g) < 0.5
    padded = F.pad(x, (p, p, p, p))
    for i in range(16):
        crop = padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        assert torch.equal(a[i], crop.flip(-1) if flip[i] else crop)


def test_augment_flip_only():
    x = torch.rand(64, 1, 8, 8)
    info = dataclasses.replace(dataset_info("fashion_mnist"), crop_padding=0)
    out = augment(x, info, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)]
    same = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert 10 < sum(flipped) < 54
    no_flip = dataclasses.replace(info, flip=False)
    assert torch.equal(augment(x, no_flip, torch.Generator().manual_seed(0)), x)


def test_augment_crop_shifts_content():
    info = dataclasses.replace(dataset_info("svhn"), crop_padding=4)  # no flips
    x = torch.zeros(64, 1, 32, 32)
    x[:, :, 16, 16] = 1.0
    out = augment(x, info, torch.Generator().manual_seed(0))
    shifts = set()
    for o in out:
        (pos,) = o[0].nonzero().tolist()  # exactly one bright pixel survives the shift
        shifts.add((pos[0] - 16, pos[1] - 16))
        assert o.sum() == 1.0
    assert all(-4 <= sy <= 4 and -4 <= sx <= 4 for sy, sx in shifts)
    assert len(shifts) > 20
    # A pixel at the border leaves the image when shifted outward: zero padding comes in.
    y = torch.zeros(64, 1, 32, 32)
    y[:, :, 0, 0] = 1.0
    sums = augment(y, info, torch.Generator().manual_seed(0)).sum(dim=(1, 2, 3))
    assert (sums == 0).any() and (sums == 1).any()


# -------------------------------------------------------------------------------------- download
def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_idx_with_checksums(tmp_path, monkeypatch, no_standard_dirs):
    mirror = tmp_path / "mirror"
    x, y = write_mnist(mirror, 3, gz=True)
    write_mnist(mirror, 2, gz=True, split="test")
    old = registry._SOURCES["mnist"]
    # The official file names and md5 of this mirror; a first mirror that does not exist.
    downloads = tuple(
        ((f"file://{tmp_path}/nowhere/{n}", f"file://{mirror}/{n}"), n, _md5(mirror / n))
        for _, n, _ in old.downloads
    )
    monkeypatch.setitem(registry._SOURCES, "mnist", dataclasses.replace(old, downloads=downloads))
    dest = tmp_path / "dl"
    with pytest.raises(DatasetError, match="--download"):
        load_split("mnist", "train", data_root=dest)
    images, labels = load_split("mnist", "train", data_root=dest, download=True)
    assert torch.equal(images[:, 0, 2:30, 2:30], torch.from_numpy(x))
    assert sorted(p.name for p in dest.iterdir()) == sorted(n for _, n, _ in downloads)

    bad = tuple((urls, n, "0" * 32) for urls, n, _ in downloads)
    monkeypatch.setitem(registry._SOURCES, "mnist", dataclasses.replace(old, downloads=bad))
    with pytest.raises(DatasetError, match="md5") as e:
        load_split("mnist", "test", data_root=tmp_path / "dl2", download=True)
    assert "nowhere" in str(e.value)  # every mirror's failure is reported
    assert not any((tmp_path / "dl2").iterdir())  # no partial or unverified file is left


def test_download_cifar_archive(tmp_path, monkeypatch, no_standard_dirs):
    import tarfile

    src = tmp_path / "src" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    for f in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        (src / f).write_bytes(pickle.dumps({b"data": cifar_rows(1, 0), b"labels": [3]}))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(src, arcname="cifar-10-batches-py")
    old = registry._SOURCES["cifar10"]
    downloads = (((f"file://{archive}",), archive.name, _md5(archive)),)
    monkeypatch.setitem(registry._SOURCES, "cifar10", dataclasses.replace(old, downloads=downloads))
    x, y = load_split("cifar10", "test", download=True)  # into the (patched) cache folder
    assert x.shape == (1, 3, 32, 32) and y.tolist() == [3]
    cache = tmp_path / "cache" / "cifar10"
    assert (cache / "cifar-10-batches-py" / "test_batch").is_file()
    assert not (cache / archive.name).exists()  # the archive is removed after extraction


def test_val_split_is_fixed_disjoint_and_seeded():
    train_x, train_y = load_split("fashion_mnist", "train")
    val_x, val_y = load_split("fashion_mnist", "val")
    assert len(val_y) == 5000 and len(train_y) == 55000
    # Reproducible from the seed alone: the first 5,000 of randperm(60000) seeded with 0.
    expected = torch.randperm(60000, generator=torch.Generator().manual_seed(0))[:5000].sort()
    assert torch.equal(val_indices("fashion_mnist", 60000), expected.values)
    # Train and val partition the official training set, in its order.
    held_out = torch.zeros(60000, dtype=torch.bool)
    held_out[expected.values] = True
    official_x, official_y = registry.readers.read_mnist_split(
        find_dataset_dir("fashion_mnist", "train"), "train")
    official_x = torch.tensor(official_x)
    assert torch.equal(val_x[:, :, 2:30, 2:30], official_x[held_out])
    assert torch.equal(train_x[:, :, 2:30, 2:30], official_x[~held_out])
    assert torch.equal(val_y, torch.as_tensor(official_y, dtype=torch.int64)[held_out])
    # Every class is represented in val (about 500 each).
    counts = torch.bincount(val_y, minlength=10)
    assert counts.min() > 400
    assert len(val_indices("fashion_mnist", 30000)) == 3000  # a tenth of a smaller set
    assert len(val_indices("tiny_imagenet", 100000)) == 10000
    with pytest.raises(DatasetError, match="use one of train, val, test"):
        load_split("fashion_mnist", "validation")
