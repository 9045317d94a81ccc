"""Conversion (notes: "Converting FC layers to CONV layers"): any trained net made fully
convolutional, and evaluated densely over images larger than its training size.

    >>> conv = cnnkit.convert.convolutionalize(net, (3, 224, 224))   # a new net; net is untouched
    >>> r = cnnkit.convert.slide(conv, image_384, stride=16, scales=(1.0, 1.5))
    >>> r.score_map.shape, r.scores.argmax()                        # (K, 11, 11), top-1 of the averages
"""

from .conversion import ConvertError, ConvolutionalNet, convolutionalize, is_converted, total_stride
from .dense import ScaleMap, SlideResult, crop_loop, resize, slide

__all__ = [
           "ConvertError",
           "ConvolutionalNet",
           "ScaleMap",
           "SlideResult",
           "convolutionalize",
           "crop_loop",
           "is_converted",
           "resize",
           "slide",
           "total_stride",
]
