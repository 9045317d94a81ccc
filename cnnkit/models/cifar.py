"""Small CIFAR-10 nets that follow the notes' layer pattern
INPUT -> [[CONV -> RELU]*N -> POOL?]*M -> [FC -> RELU]*K -> FC."""

from __future__ import annotations


def pattern(N: int, M: int, K: int, pool: bool = True, width: int = 32, hidden: int = 512,
            num_classes: int = 10, input_size: str = "32x32x3") -> str:
    """The notes' general pattern as a spec; pool=False is the POOL? left out (*0)."""
    return (f"INPUT[{input_size}] -> [[CONV3-{width} -> RELU]*{N} -> [POOL2]*{int(pool)}]*{M}"
            f" -> [FC{hidden} -> RELU]*{K} -> FC{num_classes}")


def cifar10(num_classes: int = 10, input_size: str = "32x32x3") -> str:
    """Two CONV per POOL, three times, then two hidden FC (N=2, M=3, K=2)."""
    return (f"INPUT[{input_size}] -> [[CONV3-32 -> RELU]*2 -> POOL2]*3 -> [FC512 -> RELU]*2"
            f" -> FC{num_classes}")


def cifar10_linear(num_classes: int = 10, input_size: str = "32x32x3") -> str:
    """INPUT -> FC: a linear classifier (N = M = K = 0)."""
    return f"INPUT[{input_size}] -> FC{num_classes}"


def cifar10_conv(num_classes: int = 10, input_size: str = "32x32x3") -> str:
    """INPUT -> CONV -> RELU -> FC."""
    return f"INPUT[{input_size}] -> CONV3-32 -> RELU -> FC{num_classes}"


def cifar10_simple(num_classes: int = 10, input_size: str = "32x32x3") -> str:
    """The notes' first example: INPUT -> CONV(12) -> RELU -> POOL -> FC,
    32x32x3 -> 32x32x12 -> 32x32x12 -> 16x16x12 -> 1x1x10."""
    return f"INPUT[{input_size}] -> CONV3-12 -> RELU -> POOL2 -> FC{num_classes}"


def cifar10_pool2(num_classes: int = 10, input_size: str = "32x32x3") -> str:
    """INPUT -> [CONV -> RELU -> POOL]*2 -> FC -> RELU -> FC: one CONV between pools."""
    return f"INPUT[{input_size}] -> [CONV3-32 -> RELU -> POOL2]*2 -> FC128 -> RELU -> FC{num_classes}"
