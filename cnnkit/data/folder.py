"""An ImageFolder tree: PATH/<class>/<image>.png|.jpg, classes sorted by folder name."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import DataError, Dataset, split_by_index

EXTENSIONS = {".png", ".jpg", ".jpeg"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
SEED = 0
TEST_FRACTION = 0.2


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


def read_images(paths: list[Path]) -> np.ndarray:
    """Image files of one size -> uint8 (N, C, H, W): C = 1 if every image is grayscale, else 3 (RGB)."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError("folder: reading images needs Pillow (pip install 'cnnkit[train]')") from None
    images = []
    for path in paths:
        try:
            with Image.open(path) as opened:
                opened.load()
                images.append(opened.copy())
        except (OSError, Image.DecompressionBombError) as e:
            raise DataError(f"{path}: not a readable image ({e})") from None
    mode = "L" if all(im.mode in GRAY_MODES for im in images) else "RGB"
    size = images[0].size
    arrays = []
    for path, im in zip(paths, images):
        if im.size != size:
            raise DataError(f"{path}: {im.size[0]}x{im.size[1]} pixels, expected {size[0]}x{size[1]} "
                            f"like {paths[0].name}; every image must share one size")
        a = np.asarray(im.convert(mode), dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(arrays)


def load_folder(path: str | Path, val_fraction: float = 0.1) -> Dataset:
    """Dataset 'folder:PATH': X (N, C, H, W), stratified 70/10/20 split with a fixed seed."""
    root = Path(path)
    classes, paths, labels = list_images(root)
    train, val, test = split_by_index(read_images(paths), labels, TEST_FRACTION, val_fraction, SEED)
    return Dataset(f"folder:{root}", classes, train, val, test)
