"""Dataset metadata, locating the files on disk, optional download, and cached loading."""

from __future__ import annotations

import functools
import hashlib
import http.client
import os
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from tqdm import tqdm

from dfkd.data import readers
from dfkd.errors import DatasetError
from dfkd.registry import did_you_mean


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W) as returned by load_split, i.e. after padding
    mean: tuple[float, ...]  # per-channel mean / std in [0, 1] pixel units
    std: tuple[float, ...]
    flip: bool  # horizontal flips are label-preserving (not for digits)
    crop_padding: int  # zero padding of the random-crop augmentation


# The MNIST family is zero-padded from 28x28 to 32x32 so that every model sees 32x32 inputs; its
# statistics are those of the PADDED training images. Fashion-MNIST's were computed on the real
# data (28x28: 0.2860 / 0.3530). MNIST's are derived exactly from its published 28x28 statistics
# (0.130660 / 0.308108): mean' = mean * 784/1024, E'[x^2] = E[x^2] * 784/1024.
# The others are the commonly published training-set values.
_INFOS = {
    i.name: i
    for i in (
        DatasetInfo("fashion_mnist", 10, (1, 32, 32), (0.2190,), (0.3318,), True, 2),
        DatasetInfo("mnist", 10, (1, 32, 32), (0.1000,), (0.2752,), False, 2),
        DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465),
                    (0.2470, 0.2435, 0.2616), True, 4),
        DatasetInfo("cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409),
                    (0.2673, 0.2564, 0.2762), True, 4),
        DatasetInfo("svhn", 10, (3, 32, 32), (0.4377, 0.4438, 0.4728),
                    (0.1980, 0.2010, 0.1970), False, 4),
        DatasetInfo("tiny_imagenet", 200, (3, 64, 64), (0.4802, 0.4481, 0.3975),
                    (0.2302, 0.2265, 0.2262), True, 8),
    )
}  # fmt: skip
DATASETS: tuple[str, ...] = tuple(_INFOS)


def dataset_info(name: str) -> DatasetInfo:
    """Metadata of a dataset; ``-`` and case are tolerated (``Fashion-MNIST``)."""
    key = name.strip().lower().replace("-", "_")
    if key in _INFOS:
        return _INFOS[key]
    raise DatasetError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})."
                       f"{did_you_mean(key, DATASETS)}")


# ------------------------------------------------------------------------------------ sources
_Reader = Callable[[Path, str], readers.Split]
_FM_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST_URLS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # the original site often refuses
    "http://yann.lecun.com/exdb/mnist/",
)
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"


@dataclass(frozen=True)
class _Source:
    reader: _Reader
    files: dict[str, tuple[str, ...]]  # split -> paths (relative to the dataset folder) needed
    subdirs: tuple[str, ...]  # usual folder names of the dataset under a root folder
    downloads: tuple[tuple[tuple[str, ...], str, str], ...]  # (mirror URLs, file name, md5)
    gz_ok: bool = False  # files may also be present gzipped (IDX)
    archive: bool = False  # downloads are archives to extract
    system_dirs: tuple[str, ...] = field(default=())


def _idx_downloads(bases: tuple[str, ...], md5s: tuple[str, ...]) -> tuple:
    names = [f"{n}.gz" for split in ("train", "test") for n in readers.IDX_FILES[split]]
    return tuple((tuple(b + n for b in bases), n, m) for n, m in zip(names, md5s, strict=True))


_SOURCES = {
    "fashion_mnist": _Source(
        readers.read_mnist_split,
        readers.IDX_FILES,
        ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
        _idx_downloads((_FM_URL,), ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                    "25c81989df183df01b3e8a0aad5dffbe",
                                    "bef4ecab320f06d8554ea6380940ec79",
                                    "bb300cfdad3c16e7a12a480ee83cd310")),
        gz_ok=True,
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
    "mnist": _Source(
        readers.read_mnist_split,
        readers.IDX_FILES,
        ("mnist", "MNIST/raw"),
        _idx_downloads(_MNIST_URLS, ("f68b3c2dcbeaaa9fbdd348bbdeb94873",
                                     "d53e105ee54ea40749a09fcbcd1e9432",
                                     "9fb629c4189551a2d022fa330f9573f3",
                                     "ec29112dd5afa0611ce80d1b7f02629c")),
        gz_ok=True,
        system_dirs=("/usr/share/datasets/mnist",),
    ),
    "cifar10": _Source(
        lambda folder, split: readers.read_cifar_split(folder, 10, split),
        readers.CIFAR_FILES[10],
        ("cifar-10-batches-py",),
        (((_CIFAR_URL + "cifar-10-python.tar.gz",), "cifar-10-python.tar.gz",
          "c58f30108f718f92721af3b95e74349a"),),
        archive=True,
    ),
    "cifar100": _Source(
        lambda folder, split: readers.read_cifar_split(folder, 100, split),
        readers.CIFAR_FILES[100],
        ("cifar-100-python",),
        (((_CIFAR_URL + "cifar-100-python.tar.gz",), "cifar-100-python.tar.gz",
          "eb9058c3a382ffc7106e4002c42a8d85"),),
        archive=True,
    ),
    "svhn": _Source(
        readers.read_svhn_split,
        {"train": ("train_32x32.mat",), "test": ("test_32x32.mat",)},
        ("svhn", "SVHN"),
        (((_SVHN_URL + "train_32x32.mat",), "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
         ((_SVHN_URL + "test_32x32.mat",), "test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3")),
    ),
    "tiny_imagenet": _Source(
        readers.read_tiny_imagenet_split,
        {"train": ("wnids.txt", "train"), "test": ("wnids.txt", "val/val_annotations.txt")},
        ("tiny-imagenet-200",),
        ((("http://cs231n.stanford.edu/tiny-imagenet-200.zip",), "tiny-imagenet-200.zip",
          "90528d7ca1a48142e341f4ef8d21d0de"),),
        archive=True,
    ),
}  # fmt: skip

# Module-level so that tests (and unusual installs) can redirect them.
SYSTEM_DIRS: dict[str, tuple[str, ...]] = {n: s.system_dirs for n, s in _SOURCES.items()}
CACHE_ROOT = Path("~/.cache/dfkd")


def default_download_dir(name: str) -> Path:
    return CACHE_ROOT.expanduser() / dataset_info(name).name


def search_dirs(name: str, data_root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched: data_root alone when it is given (a user who names a folder means
    that folder), else the system folders and the cache; each also with the dataset's usual
    subfolder names appended (e.g. ``data_root/cifar-10-batches-py``)."""
    name = dataset_info(name).name
    if data_root is not None:
        bases = [Path(data_root).expanduser()]
    else:
        bases = [Path(d) for d in SYSTEM_DIRS.get(name, ())] + [default_download_dir(name)]
    dirs: list[Path] = []
    for base in bases:
        for d in (base, *(base / s for s in _SOURCES[name].subdirs)):
            if d not in dirs:
                dirs.append(d)
    return dirs


def _has_split(name: str, folder: Path, split: str) -> bool:
    src = _SOURCES[name]
    return all(
        (folder / f).exists() or (src.gz_ok and (folder / f"{f}.gz").exists())
        for f in src.files[split]
    )


def find_dataset_dir(
    name: str, split: str, data_root: str | os.PathLike | None = None
) -> Path | None:
    """First searched folder holding every file of ``split``, or None."""
    name = dataset_info(name).name
    return next((d for d in search_dirs(name, data_root) if _has_split(name, d, split)), None)


def _missing_message(name: str, split: str, data_root: str | os.PathLike | None) -> str:
    src = _SOURCES[name]
    files = ", ".join(f + ("[.gz]" if src.gz_ok else "") for f in src.files[split])
    if src.archive:
        files += f" (extracted from {src.downloads[0][1]})"
    where = ", ".join(str(d) for d in search_dirs(name, data_root))
    dest = Path(data_root).expanduser() if data_root is not None else default_download_dir(name)
    if name == "fashion_mnist":
        how = (
            "Install it with `sudo apt-get install dataset-fashion-mnist` (files go to "
            "/usr/share/datasets/fashion-mnist), or put the files in a folder and pass "
            f"--data-root DIR, or let dfkd train-teacher --dataset {name} --download fetch "
            f"them into {dest} (online)."
        )
    else:
        how = (
            f"Put them in a folder and pass --data-root DIR, or let dfkd train-teacher "
            f"--dataset {name} --download fetch them from "
            f"{src.downloads[0][0][0].rsplit('/', 1)[0]}/ into {dest} (online)."
        )
    if data_root is not None:
        return (f"--data-root {Path(data_root).expanduser()} does not hold the {name} {split} "
                f"split: looked for {files} in {where}. {how}")
    return f"{name} {split} split not found: looked for {files} in {where}. {how}"


# ----------------------------------------------------------------------------------- download
def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # checksum against the published md5, not security
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(urls: tuple[str, ...], target: Path, md5: str) -> None:
    """Download to ``target`` from the first mirror that works and matches ``md5``."""
    errors = []
    part = target.with_name(target.name + ".part")
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=60) as r, part.open("wb") as f:
                total = int(r.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                    while chunk := r.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
            errors.append(f"{url}: {e}")
            part.unlink(missing_ok=True)
            continue
        got = _md5(part)
        if got == md5:
            part.replace(target)
            return
        errors.append(f"{url}: md5 {got} != expected {md5}")
        part.unlink(missing_ok=True)
    raise DatasetError(
        f"could not download {target.name} ({'; '.join(errors)}); check the network connection, "
        f"or fetch the file by hand into a folder and pass --data-root DIR"
    )


def _extract(archive: Path, dest: Path) -> None:
    try:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as z:
                for n in z.namelist():
                    if PurePosixPath(n).is_absolute() or ".." in PurePosixPath(n).parts:
                        raise DatasetError(f"{archive}: unsafe member path {n!r}; refused")
                z.extractall(dest)
        else:
            with tarfile.open(archive) as t:
                for m in t.getmembers():
                    p = PurePosixPath(m.name)
                    if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                        raise DatasetError(f"{archive}: unsafe member {m.name!r}; refused")
                # Members were checked above; the "data" filter (Python >= 3.11.4) double-checks.
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                t.extractall(dest, **kwargs)
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise DatasetError(f"{archive}: cannot extract it ({e}); delete it and retry") from e


def download_dataset(name: str, dest: str | os.PathLike) -> None:
    """Fetch (and extract) the dataset's official files into ``dest``, checking their md5."""
    src = _SOURCES[dataset_info(name).name]
    dest = Path(dest).expanduser()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"cannot create download folder {dest}: {e}") from e
    for urls, filename, md5 in src.downloads:
        target = dest / filename
        if not (target.is_file() and _md5(target) == md5):
            _fetch(urls, target, md5)
        if src.archive:
            _extract(target, dest)
            target.unlink()


# ------------------------------------------------------------------------------------ loading
SPLITS = ("train", "val", "test")
VAL_SEED = 0  # the validation split is the same for every run, user and machine
_VAL_SIZE = {"tiny_imagenet": 10000}  # 50 per class; every other dataset: 5,000 images


def val_indices(name: str, num_train: int) -> torch.Tensor:
    """Sorted indices, into the official training set, of the validation split.

    5,000 images (10,000 for Tiny-ImageNet), or a tenth of a training set of fewer than ten
    times that, drawn uniformly without replacement by ``torch.randperm`` seeded with
    ``VAL_SEED``. No student trains on them (``dfkd train-teacher`` does not either); they
    only score configurations, so that the test set is read once, for the report.
    """
    size = min(_VAL_SIZE.get(dataset_info(name).name, 5000), num_train // 10)
    order = torch.randperm(num_train, generator=torch.Generator().manual_seed(VAL_SEED))
    return order[:size].sort().values


def load_split(
    name: str, split: str, data_root: str | os.PathLike | None = None, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, C, H, W) at ``dataset_info(name).image_shape`` and labels int64 (N,).

    ``split`` is "train" (the official training set without the validation images), "val"
    (those images, see :func:`val_indices`) or "test" (Tiny-ImageNet's "test" is its
    labelled val/ folder). The result is cached in-process and shared between callers:
    treat the tensors as read-only.
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} for {info.name} (use one of "
                           f"{', '.join(SPLITS)})")
    files = "test" if split == "test" else "train"
    folder = find_dataset_dir(info.name, files, data_root)
    if folder is None:
        if not download:
            raise DatasetError(_missing_message(info.name, files, data_root))
        dest = Path(data_root).expanduser() if data_root is not None else None
        download_dataset(info.name, dest or default_download_dir(info.name))
        folder = find_dataset_dir(info.name, files, data_root)
        if folder is None:
            raise DatasetError(_missing_message(info.name, files, data_root))
    # The key includes the files' size and mtime so that a replaced file is read again.
    stamp = tuple(
        (s.st_size, s.st_mtime_ns)
        for f in _SOURCES[info.name].files[files]
        for p in (folder / f, folder / f"{f}.gz")
        if p.exists() and (s := p.stat())
    )
    return _select(info.name, split, str(folder.resolve()), stamp)


@functools.lru_cache(maxsize=8)
def _select(name: str, split: str, folder: str, stamp: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    if split == "test":
        return _load_cached(name, "test", folder, stamp)
    images, labels = _load_cached(name, "train", folder, stamp)
    held_out = torch.zeros(len(labels), dtype=torch.bool)
    held_out[val_indices(name, len(labels))] = True
    keep = held_out if split == "val" else ~held_out
    return images[keep], labels[keep]


@functools.lru_cache(maxsize=8)
def _load_cached(
    name: str, split: str, folder: str, stamp: tuple = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    info = _INFOS[name]
    images, labels = _SOURCES[name].reader(Path(folder), split)
    if len(labels) and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise DatasetError(
            f"{name} {split} in {folder}: labels span {labels.min()}..{labels.max()}, expected "
            f"0..{info.num_classes - 1}; the files are corrupt, download them again"
        )
    c, h, w = info.image_shape
    if images.shape[1] != c or h < images.shape[2] or w < images.shape[3]:
        raise DatasetError(f"{name} {split} in {folder}: images {images.shape[1:]} do not fit "
                           f"{info.image_shape}")  # fmt: skip
    # Zero-pad smaller images (the 28x28 MNIST family) symmetrically to the info's size.
    out = np.zeros((len(images), c, h, w), dtype=np.uint8)
    top, left = (h - images.shape[2]) // 2, (w - images.shape[3]) // 2
    out[:, :, top : top + images.shape[2], left : left + images.shape[3]] = images
    return torch.from_numpy(out), torch.from_numpy(np.array(labels, dtype=np.int64))
