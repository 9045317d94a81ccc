"""Data sets, mini-batches and augmentation for training cnnkit networks.

``load(spec)`` returns a Dataset: ``.name``, ``.classes``, ``.input_shape`` (C, H, W) and
``.train`` / ``.val`` / ``.test`` Splits of X float32 (N, C, H, W) in [0, 1] and y int64.
Specs: 'digits' (embedded, 8x8), 'cifar10[:PATH]', 'mnist[:PATH]', 'fashion-mnist[:PATH]'
(downloaded to ``$CNNKIT_CACHE`` or ~/.cache/cnnkit when no PATH), 'folder:PATH'.
Images are read with ``open_image``, size-checked from the header before decoding.
Only NumPy is needed to import this package; Pillow and tqdm are imported when used.
"""

from .augment import Normalize, augment, random_crop, random_flip
from .dataset import DataError, Dataset, Split, iterate_minibatches
from .download import cache_dir
from .images import open_image
from .registry import load

__all__ = [
    "load", "Dataset", "Split", "DataError", "iterate_minibatches",
    "random_crop", "random_flip", "augment", "Normalize", "cache_dir", "open_image",
]
