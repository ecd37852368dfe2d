"""The thread policy (xpnet/threads.py): how many threads a run takes on a busy machine.
Decisions only, from a mocked load and affinity; nothing is timed."""

from __future__ import annotations

import os

import pytest

from xpnet import threads


@pytest.mark.parametrize(("cores", "others", "expected"), [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 3.5, 1),
    (8, 0.0, 8), (8, 2.2, 6), (8, 20.0, 1), (1, 0.0, 1),
])
def test_choose_threads_takes_the_free_cores(cores, others, expected):
    assert threads.choose_threads(cores, others) == expected


def _loadavg(monkeypatch, text):
    real = threads.Path.read_text

    def read_text(self, *a, **kw):
        if str(self) == "/proc/loadavg":
            if text is None:
                raise OSError("no /proc here")
            return text
        return real(self, *a, **kw)
    monkeypatch.setattr(threads.Path, "read_text", read_text)


def test_other_load_is_the_smaller_of_the_average_and_the_instant(monkeypatch):
    monkeypatch.setattr(threads, "_own_running", lambda: 1)
    _loadavg(monkeypatch, "1.90 1.20 0.80 2/300 1234\n")  # 1 other runnable: the neighbour
    assert threads.other_load() == 1.0
    _loadavg(monkeypatch, "1.90 1.20 0.80 1/300 1234\n")  # the average lags an ended run
    assert threads.other_load() == 0.0
    _loadavg(monkeypatch, "0.30 1.20 0.80 5/300 1234\n")  # a burst that just started
    assert threads.other_load() == 0.3
    monkeypatch.setattr(threads, "_own_running", lambda: 3)  # our own spinning BLAS threads
    _loadavg(monkeypatch, "2.50 1.20 0.80 4/300 1234\n")
    assert threads.other_load() == 1.0
    _loadavg(monkeypatch, None)  # no /proc: the load average alone
    monkeypatch.setattr(os, "getloadavg", lambda: (0.7, 0.0, 0.0))
    assert threads.other_load() == 0.7


@pytest.fixture
def no_user_threads(monkeypatch):
    for var in threads.THREAD_VARIABLES:
        monkeypatch.setenv(var, "")  # "" counts as unset; undone after the test
    monkeypatch.setattr(threads, "_ADAPTED", None)
    import threadpoolctl
    calls: list = []
    monkeypatch.setattr(threadpoolctl, "threadpool_limits",
                        lambda limits, user_api=None: calls.append((limits, user_api)))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    return calls


def test_adapt_threads_takes_one_core_on_a_machine_with_a_busy_neighbour(
        monkeypatch, no_user_threads):
    monkeypatch.setattr(threads, "other_load", lambda: 1.0)
    assert threads.adapt_threads() == 1
    assert no_user_threads == [(1, "blas")]
    assert threads.copy_threads() == 1
    assert threads.adapt_threads() == 1 and len(no_user_threads) == 1  # unchanged: no call
    monkeypatch.setattr(threads, "other_load", lambda: 0.0)  # the neighbour left
    assert threads.adapt_threads() == 2
    assert no_user_threads[-1] == (2, "blas") and threads.copy_threads() == 2


def test_a_thread_count_the_user_set_is_left_alone(monkeypatch, no_user_threads):
    monkeypatch.setattr(threads, "other_load", lambda: 1.0)
    for var in ("XPNET_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.setenv(var, "2")
        assert threads.adapt_threads() is None
        assert no_user_threads == []
        assert threads.copy_threads() == 2
        monkeypatch.setenv(var, "")


def test_own_running_counts_this_process():
    assert threads._own_running() >= 1


def test_fit_applies_the_policy_at_its_start(monkeypatch):
    """Trainer.fit fits the thread count before its first step (the policy's one call site)."""
    import numpy as np

    import xpnet
    from xpnet.models import TwoLayerNet
    from xpnet.train import Trainer
    from xpnet.train import trainer as trainer_module

    calls = []
    monkeypatch.setattr(trainer_module, "adapt_threads", lambda: calls.append("adapt"))
    model = TwoLayerNet(4, 3, 2, seed=0)
    t = Trainer(model, xpnet.SGD(model, lr=0.1), batch_size=4)
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    t.fit(x, np.array([0, 1] * 4), epochs=1)
    assert calls == ["adapt"]
