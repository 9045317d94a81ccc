"""See inside a ConvNet: its filters, its activation volumes on an image, its top-5 classes,
a run's curves and confusion matrix (notes: "Visualizing what ConvNets learn").

    >>> from cnnkit import viz
    >>> vols = viz.layer_volumes(net, image)                # one Volume per layer
    >>> viz.plot_activations(vols, image, "acts.png", classes)
    >>> viz.plot_filters(net[0].params["weight"], "filters.png", "CONV3-32")

``tiles`` and ``inspect`` need NumPy only (the live demo uses them); the ``plot_*``
functions need matplotlib (``pip install 'cnnkit[viz]'``) and write PNGs atomically.
"""

from .inspect import (
    Volume,
    conv_layers,
    image_hwc,
    layer_text,
    layer_volumes,
    named_layers,
    softmax,
    top_k,
    volume_text,
)
from .plots import (
    plot_activations,
    plot_confusion,
    plot_curves,
    plot_filters,
    plot_predictions,
    save_figure,
)
from .tiles import (
    FilterTiles,
    VizError,
    filter_tiles,
    grid_shape,
    normalize_each,
    tile,
    tile_origin,
    to_uint8,
)

__all__ = [
    "FilterTiles",
    "VizError",
    "Volume",
    "conv_layers",
    "filter_tiles",
    "grid_shape",
    "image_hwc",
    "layer_text",
    "layer_volumes",
    "named_layers",
    "normalize_each",
    "plot_activations",
    "plot_confusion",
    "plot_curves",
    "plot_filters",
    "plot_predictions",
    "save_figure",
    "softmax",
    "tile",
    "tile_origin",
    "to_uint8",
    "top_k",
    "volume_text",
]
