"""Datasets (read without torchvision), normalisation and batch augmentation.

``load_split(name, split)`` returns the whole split as tensors: uint8 images (N, C, H, W), with
the 28x28 MNIST family zero-padded to 32x32, and int64 labels (N,). ``split`` is ``train``,
``val`` (a fixed, seeded part of the official training set that no student trains on) or
``test``.
"""

from dfkd.data.readers import (
    read_cifar_batch,
    read_cifar_split,
    read_idx,
    read_mat,
    read_mnist_split,
    read_pickle,
    read_svhn_split,
    read_tiny_imagenet_split,
)
from dfkd.data.registry import (
    DATASETS,
    SPLITS,
    DatasetInfo,
    dataset_info,
    download_dataset,
    find_dataset_dir,
    load_split,
    search_dirs,
    val_indices,
)
from dfkd.data.transforms import augment, denormalize, normalize, to_float

__all__ = [
    "DATASETS",
    "SPLITS",
    "DatasetInfo",
    "augment",
    "dataset_info",
    "denormalize",
    "download_dataset",
    "find_dataset_dir",
    "load_split",
    "normalize",
    "read_cifar_batch",
    "read_cifar_split",
    "read_idx",
    "read_mat",
    "read_mnist_split",
    "read_pickle",
    "read_svhn_split",
    "read_tiny_imagenet_split",
    "search_dirs",
    "to_float",
    "val_indices",
]
