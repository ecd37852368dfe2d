"""An interrupted epoch is rolled back: what ``fit`` keeps when a ``KeyboardInterrupt`` stops it.

At each epoch's start the Trainer takes an :class:`EpochSnapshot` (host copies of the model's
parameters and buffers, the optimizer's state, every callback's saved state, the counters, the
batch-order and layer Generators and the history's length). An interrupt anywhere in the epoch
(a batch, its evaluation, a callback) restores it before the exception propagates, so the
trainer is exactly as it was after the last finished epoch and calling ``fit`` again repeats
the interrupted epoch as an uninterrupted run would have trained it. The cost is one host copy
of the model and optimizer per epoch, as a checkpoint makes.
"""

from __future__ import annotations

import copy
from typing import Any

from .state import layer_generators

__all__ = ["EpochSnapshot"]


class EpochSnapshot:
    """Everything an epoch changes, copied at its start; :meth:`restore` puts it back."""

    def __init__(self, trainer: Any):
        state = trainer.state
        self.model = trainer.model.state_dict()  # host copies
        self.optimizer = trainer.optimizer.state_dict()
        self.callbacks = {c.key: copy.deepcopy(c.state_dict())
                          for c in trainer.callbacks if c.key}
        self.epoch, self.step = state.epoch, state.step
        self.rng = copy.deepcopy(state.rng.get_state())
        self.layer_rngs = {k: copy.deepcopy(g.get_state())
                           for k, g in layer_generators(trainer.model).items()}
        self.records, self.steps = len(state.history.records), len(state.history.steps)

    def restore(self, trainer: Any) -> None:
        """Put the trainer back as it was when this snapshot was taken."""
        state = trainer.state
        trainer.model.load_state_dict(self.model, backend=trainer.backend,
                                      allow_nonfinite=True)  # its own earlier state
        trainer.optimizer.load_state_dict(self.optimizer)
        trainer.model.zero_grad()  # an accumulation group cut short adds nothing later
        for c in trainer.callbacks:
            if c.key in self.callbacks:
                c.load_state_dict(self.callbacks[c.key])
        state.epoch, state.step = self.epoch, self.step
        state.rng.set_state(self.rng)
        for k, g in layer_generators(trainer.model).items():
            g.set_state(self.layer_rngs[k])
        del state.history.records[self.records:]
        del state.history.steps[self.steps:]
