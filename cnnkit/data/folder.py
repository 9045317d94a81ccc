"""An ImageFolder tree: PATH/<class>/<image>.png|.jpg, classes sorted by folder name."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .bounded import format_bytes, memory_limit
from .dataset import DataError, Dataset, split_by_index
from .images import open_image, probe_image

EXTENSIONS = {".png", ".jpg", ".jpeg"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
SEED = 0
TEST_FRACTION = 0.2
MAX_FRACTION = 0.5   # a folder data set may take at most this share of physical memory


def list_images(root: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """root -> (class names sorted, image paths, int64 labels), images sorted within a class."""
    if not root.is_dir():
        raise DataError(f"folder: {root} is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in EXTENSIONS)
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise DataError(f"folder: {root} has no class subfolders holding .png or .jpg images")
    return classes, paths, np.array(labels, dtype=np.int64)


def read_images(paths: list[Path], max_bytes: int | None = None) -> np.ndarray:
    """Image files of one size -> uint8 (N, C, H, W): C = 1 if every image is grayscale, else 3 (RGB).

    Every header is read first: sizes must agree, and the float32 data set they make
    (N x C x H x W x 4 bytes) must fit max_bytes (default MAX_FRACTION of physical
    memory), before any image is decoded."""
    infos = [probe_image(path) for path in paths]
    mode = "L" if all(info.mode in GRAY_MODES for info in infos) else "RGB"
    width, height = infos[0].width, infos[0].height
    for path, info in zip(paths, infos):
        if (info.width, info.height) != (width, height):
            raise DataError(f"{path}: {info.width}x{info.height} pixels, expected {width}x{height} "
                            f"like {paths[0].name}; every image must share one size")
    need = len(paths) * (1 if mode == "L" else 3) * width * height * 4
    limit = max_bytes if max_bytes is not None else memory_limit(MAX_FRACTION)
    if need > limit:
        raise DataError(f"folder: {len(paths):,} images of {width}x{height} make {format_bytes(need)} as float32, "
                        f"more than the {format_bytes(limit)} allowed; refused before decoding")
    arrays = []
    for path in paths:
        a = np.asarray(open_image(path).convert(mode), dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(arrays)


def load_folder(path: str | Path, val_fraction: float = 0.1) -> Dataset:
    """Dataset 'folder:PATH': X (N, C, H, W), stratified 70/10/20 split with a fixed seed."""
    root = Path(path)
    classes, paths, labels = list_images(root)
    train, val, test = split_by_index(read_images(paths), labels, TEST_FRACTION, val_fraction, SEED)
    return Dataset(f"folder:{root}", classes, train, val, test)
