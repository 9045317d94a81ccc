"""Training (CS231n notes, "Neural Networks 3"): the loop, checkpoints, metrics and curves.

    >>> from cnnkit.train import TrainConfig, Trainer
    >>> result = Trainer(TrainConfig(data="digits", epochs=20), "runs/digits").fit()
    >>> result.test_acc                      # 0.98...
    >>> Trainer.resume("runs/digits").fit()  # continue a stopped run exactly

A run folder holds ``checkpoint.safetensors`` (latest; every epoch, every
``checkpoint_every`` steps and on Ctrl-C), ``metrics.jsonl``, ``metrics.png`` and
``config.json``. A fresh Trainer refuses a folder that already holds a run
(``overwrite=True`` replaces it).
"""

from .metrics import MetricsLog, MetricsWarning, plot_metrics, read_metrics
from .trainer import (
    CHECKPOINT,
    DEFAULT_SPEC,
    OPTIMIZERS,
    DivergedError,
    RunExistsError,
    TrainConfig,
    Trainer,
    TrainError,
    TrainingInterrupted,
    TrainResult,
    accuracy,
    check_run_dir,
    confusion_matrix,
    default_run_dir,
    make_model,
    make_optimizer,
    make_schedule,
    normalize,
    predict_scores,
    start_small,
    train,
)

__all__ = [
    "TrainConfig", "Trainer", "TrainResult", "train", "TrainError", "DivergedError", "TrainingInterrupted",
    "RunExistsError", "DEFAULT_SPEC", "CHECKPOINT", "OPTIMIZERS", "make_model", "make_optimizer", "make_schedule",
    "start_small", "normalize", "predict_scores", "accuracy", "confusion_matrix", "check_run_dir", "default_run_dir",
    "MetricsLog", "MetricsWarning", "read_metrics", "plot_metrics",
]
