"""Image files read safely: the size is taken from the header and checked before any
pixel is decoded, and every error Pillow can raise on a hostile file (its
DecompressionBombError included) becomes one DataError naming the file.

``open_image`` is the one function for every reader of user images (folder data sets,
``cnnkit predict``)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .dataset import DataError

if TYPE_CHECKING:
    from PIL.Image import Image

#: at most this many pixels per image (a 8192 x 8192 photo; Pillow's own bomb limit is 89M)
MAX_PIXELS = 1 << 26


class ImageInfo(NamedTuple):
    """What an image's header says: width, height (pixels) and Pillow's mode ('L', 'RGB', ...)."""

    width: int
    height: int
    mode: str


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading images needs Pillow (pip install 'cnnkit[train]')") from None
    return Image


def _opened(path: Path, max_pixels: int, decode: bool):
    """(ImageInfo, loaded copy or None) of path; DataError for anything unreadable or too big."""
    Image = _pil()
    try:
        with warnings.catch_warnings():
            # the limit below is ours and lower; Pillow's warning for > 89M pixels would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:   # reads the header only
                width, height = opened.size
                if width * height > max_pixels:
                    raise DataError(f"{path}: {width}x{height} pixels, more than the {max_pixels:,} an image "
                                    "may have; refused before decoding")
                info = ImageInfo(width, height, opened.mode)
                if not decode:
                    return info, None
                opened.load()
                return info, opened.copy()
    except DataError:
        raise
    except Image.DecompressionBombError as e:   # not an OSError: caught by name
        raise DataError(f"{path}: refused by Pillow as a decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # Pillow's plugins raise all of these on bad files
        raise DataError(f"{path}: not a readable image ({e})") from None


def probe_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """An image file's (width, height, mode) from its header alone, checked against max_pixels."""
    return _opened(Path(path), max_pixels, decode=False)[0]


def open_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image:
    """A decoded Pillow image of path, its size checked from the header before decoding.

    Raises DataError (one line naming the file) for a missing, corrupt or too large image,
    never Pillow's own errors."""
    image = _opened(Path(path), max_pixels, decode=True)[1]
    assert image is not None
    return image
