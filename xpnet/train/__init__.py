"""Training: a :class:`Trainer` built from small parts, each usable on its own.

- :func:`train_step` (step.py): one forward, backward and optimizer step; no host sync.
- :func:`evaluate` and :func:`predict` (evaluate.py): batched, in evaluation mode, one host
  sync per call.
- metrics.py: what is counted besides the loss (accuracy for classification), summed on the
  device and read back in one sync.
- progress.py: the tqdm bar and the per-epoch line (shown only when enabled).
- guard.py: data checks before training and the divergence guard (:class:`TrainingDiverged`).
- callbacks.py: :class:`EarlyStopping`, :class:`KeepBest`, run at the end of every epoch.
- state.py: :class:`History` and :class:`RunState`, what a checkpoint holds besides the model
  and optimizer, and its validation on resume.
- trainer.py: :class:`Trainer`, which calls these at fixed points of ``fit``.
"""

from .callbacks import Callback, EarlyStopping, KeepBest
from .evaluate import evaluate, predict
from .guard import DivergenceGuard, TrainingDiverged, check_data
from .metrics import Accuracy, MeanSquaredError, Metric, Totals, default_metrics
from .progress import Progress, epoch_line
from .state import History, RunState
from .step import StepOutput, train_step
from .trainer import Trainer

__all__ = [
    "Accuracy", "Callback", "DivergenceGuard", "EarlyStopping", "History", "KeepBest",
    "MeanSquaredError", "Metric", "Progress", "RunState", "StepOutput", "Totals", "Trainer",
    "TrainingDiverged", "check_data", "default_metrics", "epoch_line", "evaluate", "predict",
    "train_step",
]
