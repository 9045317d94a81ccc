"""Training (CS231n notes, "Neural Networks 3"): the loop, checkpoints, metrics and curves.

    >>> from cnnkit.train import TrainConfig, Trainer
    >>> result = Trainer(TrainConfig(data="digits", epochs=20), "runs/digits").fit()
    >>> result.test_acc                      # 0.98...
    >>> Trainer.resume("runs/digits").fit()  # continue a stopped run exactly

A run folder holds ``checkpoint.safetensors`` (latest; every epoch, every
``checkpoint_every`` steps and on Ctrl-C), ``metrics.jsonl``, ``metrics.png`` and
``config.json``.
"""

from .metrics import MetricsLog, plot_metrics, read_metrics
from .trainer import (
    CHECKPOINT, DEFAULT_SPEC, OPTIMIZERS, DivergedError, TrainConfig, Trainer, TrainError, TrainingInterrupted,
    TrainResult, accuracy, confusion_matrix, make_model, make_optimizer, make_schedule, normalize,
    predict_scores, train,
)

__all__ = [
    "TrainConfig", "Trainer", "TrainResult", "train", "TrainError", "DivergedError", "TrainingInterrupted",
    "DEFAULT_SPEC", "CHECKPOINT", "OPTIMIZERS", "make_model", "make_optimizer", "make_schedule",
    "normalize", "predict_scores", "accuracy", "confusion_matrix",
    "MetricsLog", "read_metrics", "plot_metrics",
]
