"""Readers for the on-disk formats of the supported datasets, written without torchvision/scipy.

Low-level format readers: :func:`read_idx`, :func:`read_pickle` (restricted to numpy arrays),
:func:`read_mat` (MATLAB level 5). Layout readers, one per dataset family, return numpy arrays
``images`` uint8 (N, C, H, W) at the files' native size and ``labels`` int64 (N,):
:func:`read_mnist_split`, :func:`read_cifar_split`, :func:`read_svhn_split`,
:func:`read_tiny_imagenet_split`. Every problem with the files raises :class:`DatasetError`.
"""

from __future__ import annotations

import gzip
import importlib
import io
import os
import pickle
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dfkd.errors import DatasetError

Split = tuple[np.ndarray, np.ndarray]

_CORRUPT = (
    "the file is truncated or corrupt: delete it and download it again (or reinstall the package)"
)


def _read_file(path: Path) -> bytes:
    """Whole file contents, transparently gunzipped when the name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: file not found") from e
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"{path}: cannot read it ({e}); {_CORRUPT}") from e


# ----------------------------------------------------------------------------------------- IDX
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (magic 0x0000080N), gzipped or not."""
    path = Path(path)
    data = _read_file(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: only {len(data)} bytes, no IDX header; {_CORRUPT}")
    magic = int.from_bytes(data[:4], "big")
    nd = data[3]
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08 or nd == 0:
        raise DatasetError(
            f"{path}: bad magic number 0x{magic:08x} (expected 0x0000080N for an IDX file of "
            f"unsigned bytes); {_CORRUPT}"
        )
    if ndim is not None and nd != ndim:
        raise DatasetError(f"{path}: IDX file has {nd} dimensions, expected {ndim}; {_CORRUPT}")
    header = 4 + 4 * nd
    if len(data) < header:
        raise DatasetError(f"{path}: header cut short ({len(data)} bytes); {_CORRUPT}")
    dims = struct.unpack(f">{nd}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise DatasetError(
            f"{path}: payload is {len(data) - header} bytes but the header's dimensions "
            f"{dims} need {expected}; {_CORRUPT}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def idx_file(folder: Path, base: str) -> Path | None:
    """``folder/base`` or ``folder/base.gz``, preferring the uncompressed file (faster)."""
    for p in (folder / base, folder / f"{base}.gz"):
        if p.is_file():
            return p
    return None


def read_mnist_split(folder: str | os.PathLike, split: str) -> Split:
    """MNIST / Fashion-MNIST split from its two IDX files: images (N, 1, 28, 28)."""
    folder = Path(folder)
    paths = [idx_file(folder, base) or folder / f"{base}.gz" for base in IDX_FILES[split]]
    images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
    if len(images) != len(labels):
        raise DatasetError(
            f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels; "
            f"{_CORRUPT}"
        )
    return images[:, None], labels.astype(np.int64)


# -------------------------------------------------------------------------------------- pickle
def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 protocol-2 pickles store bytes as _codecs.encode(str, "latin1"); allow only that.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise DatasetError(f"pickle asks for _codecs.encode with encoding {encoding!r}; refused")
    return text.encode("latin1")


# Everything a numpy array (and its dtype) pickled by numpy 1.x or 2.x may reference.
_NUMPY_GLOBALS = {
    ("multiarray", "_reconstruct"),
    ("multiarray", "scalar"),
    ("numeric", "_frombuffer"),  # protocol 5
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build plain containers and numpy arrays, and nothing else.

    A pickle can call any importable callable while loading; refusing every global except
    numpy's array-reconstruction helpers stops a crafted file from running code.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy", "numpy.core", "numpy._core") and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        for prefix in ("numpy.core.", "numpy._core."):
            if module.startswith(prefix) and (module[len(prefix) :], name) in _NUMPY_GLOBALS:
                sub = module[len(prefix) :]
                try:  # numpy 2 moved numpy.core to numpy._core; map either name to this numpy
                    mod = importlib.import_module(f"numpy._core.{sub}")
                except ImportError:
                    mod = importlib.import_module(f"numpy.core.{sub}")
                return getattr(mod, name)
        raise DatasetError(f"pickle references {module}.{name}, which is not allowed")


def read_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle that may only contain builtins and numpy arrays (py2 str -> bytes)."""
    path = Path(path)
    data = _read_file(path)
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DatasetError as e:
        raise DatasetError(f"{path}: refusing to load it: {e}") from None
    except Exception as e:  # unpickling a damaged file can fail in many different ways
        msg = f"{path}: not a readable pickle ({type(e).__name__}: {e}); {_CORRUPT}"
        raise DatasetError(msg) from e


def _get(d: dict, key: str) -> Any:
    # Official (Python 2) archives decode to bytes keys; pickles written by Python 3 have str keys.
    return d[key.encode()] if key.encode() in d else d[key]


def read_cifar_batch(path: str | os.PathLike, label_key: str = "labels") -> Split:
    """One CIFAR python batch: rows of 3072 bytes (R plane, G plane, B plane) -> (N, 3, 32, 32)."""
    path = Path(path)
    batch = read_pickle(path)
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: not a CIFAR batch (a {type(batch).__name__}); {_CORRUPT}")
    try:
        data, labels = _get(batch, "data"), np.asarray(_get(batch, label_key), dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        msg = f"{path}: not a CIFAR batch (no usable data/{label_key}: {e}); {_CORRUPT}"
        raise DatasetError(msg) from e
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise DatasetError(f"{path}: 'data' is not a 2-D uint8 array; {_CORRUPT}")
    if data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise DatasetError(
            f"{path}: data {data.shape} and labels {labels.shape} do not match (N, 3072) and "
            f"(N,); {_CORRUPT}"
        )
    return data.reshape(-1, 3, 32, 32), labels


CIFAR_FILES = {
    10: {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    100: {"train": ("train",), "test": ("test",)},
}


def read_cifar_split(folder: str | os.PathLike, num_classes: int, split: str) -> Split:
    """CIFAR-10 (``cifar-10-batches-py``) or CIFAR-100 (``cifar-100-python``) split."""
    key = "labels" if num_classes == 10 else "fine_labels"
    parts = [read_cifar_batch(Path(folder) / f, key) for f in CIFAR_FILES[num_classes][split]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# --------------------------------------------------------------------------------- MAT level 5
_MI_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8",
             13: "u8"}  # fmt: skip
_MI_MATRIX, _MI_COMPRESSED = 14, 15
# Numeric array classes (mxDOUBLE_CLASS=6 ... mxUINT64_CLASS=15); others are skipped.
_MX_TYPES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8",
             15: "u8"}  # fmt: skip


def _element(buf: memoryview, pos: int, order: str, path: Path) -> tuple[int, memoryview, int]:
    """Parse the data element at ``pos``: (type, payload, position of the next element)."""
    if pos + 8 > len(buf):
        raise DatasetError(f"{path}: MAT data element cut short at byte {pos}; {_CORRUPT}")
    first = int.from_bytes(buf[pos : pos + 4], order)
    if first >> 16:  # small data element: 2-byte size, 2-byte type, <= 4 payload bytes in the tag
        size = first >> 16
        if size > 4:
            raise DatasetError(f"{path}: bad small MAT data element at byte {pos}; {_CORRUPT}")
        return first & 0xFFFF, buf[pos + 4 : pos + 4 + size], pos + 8
    size = int.from_bytes(buf[pos + 4 : pos + 8], order)
    start, end = pos + 8, pos + 8 + size
    if end > len(buf):
        raise DatasetError(f"{path}: MAT data element at byte {pos} runs past the end; {_CORRUPT}")
    # Elements are padded to 8 bytes, except compressed ones (their size is the zlib length).
    return first, buf[start:end], end if first == _MI_COMPRESSED else start + -(-size // 8) * 8


def _matrix(buf: memoryview, order: str, path: Path) -> tuple[str, np.ndarray | None]:
    """Decode a miMATRIX payload into (name, array); array is None for non-numeric classes."""
    end = "<" if order == "little" else ">"
    _, flags, pos = _element(buf, 0, order, path)
    mx_class = int.from_bytes(flags[:4], order) & 0xFF
    _, dims_raw, pos = _element(buf, pos, order, path)
    dims = tuple(int(d) for d in np.frombuffer(dims_raw, f"{end}i4"))
    _, name_raw, pos = _element(buf, pos, order, path)
    name = bytes(name_raw).decode("latin1")
    if mx_class not in _MX_TYPES:
        return name, None
    mi_type, real, _ = _element(buf, pos, order, path)
    if mi_type not in _MI_TYPES:
        raise DatasetError(f"{path}: variable {name!r} has unknown MAT data type {mi_type}")
    # MATLAB may store e.g. a double array as uint8 on disk; the class decides the final type.
    values = np.frombuffer(real, f"{end}{_MI_TYPES[mi_type]}")
    if values.size != int(np.prod(dims, dtype=np.int64)):
        raise DatasetError(
            f"{path}: variable {name!r} has {values.size} values for dimensions {dims}; {_CORRUPT}"
        )
    return name, values.astype(_MX_TYPES[mx_class], copy=False).reshape(dims, order="F")


def read_mat(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Numeric variables of a MATLAB level-5 MAT-file (v6/v7, zlib-compressed or not).

    Arrays keep MATLAB's (column-major) dimension order, e.g. SVHN's X is (32, 32, 3, N).
    Cells, structs, chars and sparse arrays are skipped; complex arrays yield the real part.
    """
    path = Path(path)
    raw = memoryview(_read_file(path))
    head = bytes(raw[:128])
    if len(head) < 128 or not head.startswith(b"MATLAB"):
        raise DatasetError(f"{path}: not a MATLAB level-5 MAT-file (bad header); {_CORRUPT}")
    if head.startswith(b"MATLAB 7.3"):
        raise DatasetError(f"{path}: MAT-file v7.3 (HDF5) is not supported; re-save with -v7")
    order = {b"IM": "little", b"MI": "big"}.get(head[126:128])
    if order is None:
        raise DatasetError(f"{path}: bad endian indicator in the MAT header; {_CORRUPT}")
    out: dict[str, np.ndarray] = {}
    pos = 128
    while pos + 8 <= len(raw):
        mi_type, payload, pos = _element(raw, pos, order, path)
        if mi_type == _MI_COMPRESSED:
            inflater = zlib.decompressobj()
            try:
                payload = memoryview(inflater.decompress(payload))
            except zlib.error as e:
                raise DatasetError(f"{path}: bad compressed MAT element ({e}); {_CORRUPT}") from e
            if not inflater.eof:
                raise DatasetError(f"{path}: compressed MAT element cut short; {_CORRUPT}")
            mi_type, payload, _ = _element(payload, 0, order, path)
        if mi_type == _MI_MATRIX and len(payload):
            name, array = _matrix(payload, order, path)
            if array is not None:
                out[name] = array
    return out


def read_svhn_split(folder: str | os.PathLike, split: str) -> Split:
    """SVHN ``{split}_32x32.mat``: X (32, 32, 3, N) -> (N, 3, 32, 32); label 10 means digit 0."""
    path = Path(folder) / f"{split}_32x32.mat"
    mat = read_mat(path)
    if "X" not in mat or "y" not in mat:
        raise DatasetError(f"{path}: expected variables X and y, found {sorted(mat)}; {_CORRUPT}")
    x, y = mat["X"], mat["y"].reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise DatasetError(f"{path}: X {x.shape} / y {mat['y'].shape} are not (32, 32, 3, N) / "
                           f"(N, 1); {_CORRUPT}")  # fmt: skip
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1), dtype=np.uint8)
    labels = y.astype(np.int64)
    labels[labels == 10] = 0
    return images, labels


# ------------------------------------------------------------------------------- Tiny-ImageNet
_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}


def read_image_files(files: list[Path], size: int, desc: str = "reading images") -> np.ndarray:
    """Decode images to RGB uint8 (N, 3, size, size) using a thread pool (PIL drops the GIL)."""
    from PIL import Image  # imported lazily: only Tiny-ImageNet needs it

    out = np.empty((len(files), size, size, 3), np.uint8)

    def load(i: int) -> None:
        try:
            with Image.open(files[i]) as im:
                rgb = im.convert("RGB")
        except (OSError, ValueError) as e:  # UnidentifiedImageError is an OSError
            raise DatasetError(f"{files[i]}: cannot decode image ({e}); {_CORRUPT}") from e
        if rgb.size != (size, size):
            raise DatasetError(f"{files[i]}: image is {rgb.size}, expected {size}x{size}")
        out[i] = np.asarray(rgb)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        jobs = pool.map(load, range(len(files)))
        for _ in tqdm(jobs, total=len(files), desc=desc, disable=len(files) < 1000, leave=False):
            pass
    return out.transpose(0, 3, 1, 2).copy()


def read_tiny_imagenet_split(folder: str | os.PathLike, split: str) -> Split:
    """Tiny-ImageNet-200 ``train`` or ``test`` (= the labelled ``val/`` folder), 64x64 RGB."""
    folder = Path(folder)
    wnids_path = folder / "wnids.txt"
    try:
        wnids = [w.strip() for w in wnids_path.read_text().splitlines() if w.strip()]
    except OSError as e:
        raise DatasetError(f"{wnids_path}: cannot read it ({e})") from e
    index = {w: i for i, w in enumerate(wnids)}  # class index = line order in wnids.txt
    files: list[Path] = []
    labels: list[int] = []
    if split == "train":
        for wnid, i in index.items():
            d = folder / "train" / wnid / "images"
            found = sorted(p for p in d.glob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
            if not found:
                raise DatasetError(f"{d}: no images for class {wnid}; {_CORRUPT}")
            files += found
            labels += [i] * len(found)
    else:
        ann = folder / "val" / "val_annotations.txt"
        try:
            lines = [line.split("\t") for line in ann.read_text().splitlines() if line.strip()]
        except OSError as e:
            raise DatasetError(f"{ann}: cannot read it ({e})") from e
        for parts in sorted(lines):
            if len(parts) < 2 or parts[1] not in index:
                raise DatasetError(f"{ann}: bad line {chr(9).join(parts)!r}; {_CORRUPT}")
            files.append(folder / "val" / "images" / parts[0])
            labels.append(index[parts[1]])
    images = read_image_files(files, 64, desc=f"tiny_imagenet {split}")
    return images, np.asarray(labels, dtype=np.int64)
