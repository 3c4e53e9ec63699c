"""CIFAR-10/100 files in the official python-pickle format, made up for tests.

The layout, file names and keys are those of the official archives (``cifar-10-batches-py``:
``data_batch_1..5``, ``test_batch``, ``batches.meta``; ``cifar-100-python``: ``train``,
``test``, ``meta``), pickled with protocol 2 and bytes keys as the Python 2 originals read
in Python 3. Rows hold the R plane, then G, then B, each 32x32 row-major.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"


def _dump(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar(root: Path, num_classes: int, train: tuple[np.ndarray, np.ndarray],
                test: tuple[np.ndarray, np.ndarray]) -> Path:
    """Write ``(images uint8 (N, 3, 32, 32), labels (N,))`` train and test sets under
    ``root`` in the official layout of CIFAR-``num_classes``; returns the dataset folder."""
    def rows(images: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(images.reshape(len(images), 3 * 32 * 32), dtype=np.uint8)

    def names(n: int, prefix: str) -> list[bytes]:
        return [f"{prefix}_{i:05d}.png".encode() for i in range(n)]

    if num_classes == 10:
        folder = Path(root) / CIFAR10_DIR
        folder.mkdir(parents=True, exist_ok=True)
        x, y = train
        for part, idx in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
            _dump(folder / f"data_batch_{part}", {
                b"batch_label": f"training batch {part} of 5".encode(),
                b"labels": [int(v) for v in y[idx]], b"data": rows(x[idx]),
                b"filenames": names(len(idx), "tr")})
        _dump(folder / "test_batch", {
            b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in test[1]],
            b"data": rows(test[0]), b"filenames": names(len(test[1]), "te")})
        _dump(folder / "batches.meta", {
            b"num_cases_per_batch": 10000, b"num_vis": 3072,
            b"label_names": [f"class{i}".encode() for i in range(10)]})
        return folder
    folder = Path(root) / CIFAR100_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in (("train", train), ("test", test)):
        _dump(folder / split, {
            b"filenames": names(len(y), split), b"batch_label": f"{split}ing batch 1 of 1".encode(),
            b"fine_labels": [int(v) for v in y], b"coarse_labels": [int(v) // 5 for v in y],
            b"data": rows(x)})
    _dump(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    return folder


def random_cifar(root: Path, num_classes: int, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random pixels and labels in the official layout (for runs that only need the files)."""
    rng = np.random.default_rng(seed)

    def part(n: int) -> tuple[np.ndarray, np.ndarray]:
        return (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
                rng.integers(0, num_classes, n))

    return write_cifar(root, num_classes, part(n_train), part(n_test))
