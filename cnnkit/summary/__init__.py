"""The notes' VGG table for any network (``table``), and what training and inference cost
in memory (``memory``), with the notes' units (``units``)."""

from .memory import (
                     MemoryEstimate,
                     inference_bound,
                     largest_batch,
                     measure_inference_peak,
                     measure_training_peak,
                     net_and_shape,
                     optimizer_slots,
                     streaming_forward,
                     training_memory,
)
from .table import FOLDED, VGG16_PARAMS, Row, Summary, summary
from .units import SummaryError, human, human_bytes, parse_bytes

__all__ = ["summary", "Summary", "Row", "FOLDED", "VGG16_PARAMS", "MemoryEstimate", "training_memory",
           "largest_batch", "inference_bound", "streaming_forward", "measure_training_peak",
           "measure_inference_peak", "net_and_shape", "optimizer_slots", "SummaryError", "human",
           "human_bytes", "parse_bytes"]
