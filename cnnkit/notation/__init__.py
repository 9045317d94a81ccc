"""The model language: the notes' architecture notation, executable ("ConvNet Architectures").

    >>> net = build("INPUT[32x32x3] -> [[CONV3-32 -> RELU]*2 -> POOL2]*3 -> [FC512 -> RELU]*2 -> FC10")
    >>> to_spec(net)
    'INPUT[32x32x3] -> [[CONV3-32 -> RELU]*2 -> POOL2]*3 -> [FC512 -> RELU]*2 -> FC10'

Notation (volumes are written as in the notes, W x H x D; cnnkit arrays are (N, D, H, W)):

* ``INPUT[WxHxD]`` (or ``INPUT[D]`` for flat input) starts a spec; depths are inferred.
* ``CONV{F}-{K}``: K filters of F x F, stride 1, size-preserving P = (F - 1)/2. Options
  follow directly: ``/S`` stride, ``pP`` padding, ``dD`` dilation (PyTorch's: d2 is the
  notes' "dilation 1"), ``gG`` groups, ``nb`` no bias, ``floor``/``ceil`` rounding. F, S, P
  may be ``HxW`` pairs. E.g. AlexNet's conv1 ``CONV11-96/4p0``.
* ``POOL{F}`` max pooling F x F at stride F (``POOL2``); ``POOL3/2`` overlaps. Also
  ``AVGPOOL{F}``, ``L2POOL{F}``, ``GAP`` (global average pooling).
* ``FC{K}`` (flattens its input itself), ``RELU``, ``FLATTEN``, ``DROPOUT`` / ``DROPOUT0.3``,
  ``NORM`` / ``NORM5`` (local response normalization), ``BN`` (batch norm),
  ``LC{F}-{K}`` (locally connected: a CONV without weight sharing; same defaults and options
  except dilation and groups).
* Any layer takes keyword settings: ``BN(eps=0.001)``, ``NORM(k=1.0)``, ``DROPOUT(seed=0)``.
* ``[a -> b]*N`` repeats (N = 0 drops it: the notes' ``POOL?``); nests.
* ``RES[body]`` / ``RES[body | shortcut]``: y = body(x) + shortcut(x) (ResNet).
* ``CAT[branch | branch | ...]``: branches joined along depth (Inception).
* ``SEQ[...]``: a nested Sequential.
* ``#`` comments; line breaks may replace ``->``; ``NAME: [WxHxD]`` annotates the
  expected output volume, so the notes' VGG-16 listing builds as printed.
"""

from .build import as_input_shape, build, format_volume, infer_shapes, parse_volume
from .errors import SpecError, SpecShapeError
from .limits import LimitError, memory_limit
from .lint import RULES, LintWarning, lint
from .parser import parse
from .write import to_spec

__all__ = ["build", "to_spec", "parse", "lint", "LintWarning", "RULES", "SpecError", "SpecShapeError",
           "infer_shapes", "format_volume", "parse_volume", "as_input_shape", "LimitError", "memory_limit"]
