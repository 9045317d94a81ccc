"""PyTorch interoperability: state dicts with torchvision's names in and out of cnnkit nets.

    >>> net = cnnkit.models.get("resnet18")
    >>> cnnkit.load_torch_weights(net, "resnet18-f37072fd.pth")      # torchvision's file, no torch
    >>> cnnkit.save_torch_weights(net, "resnet18.safetensors")        # torchvision loads it strictly

Nothing here imports torch or unpickles freely: ``.pth`` files go through an allow-list
unpickler (``cnnkit.interop.pth``), ``.safetensors`` through NumPy.
"""

from .errors import WeightsError
from .names import torchvision_names
from .weights import (
           load_torch_weights,
           read_state_dict,
           save_torch_weights,
           torch_state_dict,
)

__all__ = [
           "WeightsError",
           "load_torch_weights",
           "read_state_dict",
           "save_torch_weights",
           "torch_state_dict",
           "torchvision_names",
]
