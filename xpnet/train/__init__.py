"""Training: a :class:`Trainer` whose loop fires events, and the callbacks and parts it uses.

- :func:`train_step` (step.py): one forward, backward and optimizer step; no host sync.
- :func:`evaluate` and :func:`predict` (evaluate.py): batched, in evaluation mode, one host
  sync per call.
- metrics.py: what is counted besides the loss (accuracy for classification), summed on the
  device and read back in one sync.
- checks.py: the data checks that run before training starts.
- callbacks.py: the :class:`Callback` protocol (events, priorities, state for resume) and
  :class:`LRSchedule`, :class:`SaveCheckpoint`, :class:`EarlyStopping`, :class:`KeepBest`;
  progress.py (:class:`Progress`) and guard.py (:class:`DivergenceGuard`) are callbacks too.
- state.py: :class:`History` and :class:`RunState`, what a checkpoint holds besides the model,
  optimizer and callbacks.
- parallel.py: what changes when ``fit`` runs on N ranks.
- trainer.py: :class:`Trainer`, a short loop that fires the callbacks' events.
"""

from .callbacks import Callback, EarlyStopping, KeepBest, LossScaling, LRSchedule, SaveCheckpoint
from .checks import check_data
from .evaluate import evaluate, predict
from .guard import DivergenceGuard, TrainingDiverged
from .metrics import Accuracy, MeanSquaredError, Metric, Totals, default_metrics
from .progress import Progress, epoch_line
from .state import History, RunState
from .step import StepOutput, train_step
from .trainer import Trainer

__all__ = [
    "Accuracy", "Callback", "DivergenceGuard", "EarlyStopping", "History", "KeepBest",
    "LRSchedule", "LossScaling", "MeanSquaredError", "Metric", "Progress", "RunState",
    "SaveCheckpoint", "StepOutput", "Totals", "Trainer", "TrainingDiverged", "check_data",
    "default_metrics", "epoch_line", "evaluate", "predict", "train_step",
]
