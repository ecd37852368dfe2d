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


def test_other_load_ignores_a_task_that_runs_for_one_instant(monkeypatch):
    """The instant count is the least of several samples: a task awake for one of them (a
    shell, a logger) does not take a core from the run, a neighbour in every one does."""
    monkeypatch.setattr(threads, "_own_running", lambda: 1)
    monkeypatch.setattr(threads, "LOAD_SAMPLE_GAP", 0.0)
    readings = iter(["1.90 1.20 0.80 2/300 1234\n"] + ["1.90 1.20 0.80 1/300 1234\n"] * 9)
    real = threads.Path.read_text
    monkeypatch.setattr(threads.Path, "read_text", lambda self, *a, **kw: next(readings)
                        if str(self) == "/proc/loadavg" else real(self, *a, **kw))
    assert threads.other_load() == 0.0  # one blip, then nothing: no other load
    _loadavg(monkeypatch, "1.90 1.20 0.80 2/300 1234\n")  # in every sample: a neighbour
    assert threads.other_load() == 1.0


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
    monkeypatch.setattr(trainer_module, "adapt_threads",
                        lambda saved=None: calls.append("adapt"))
    model = TwoLayerNet(4, 3, 2, seed=0)
    t = Trainer(model, xpnet.SGD(model, lr=0.1), batch_size=4)
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    t.fit(x, np.array([0, 1] * 4), epochs=1)
    assert calls == ["adapt"]


# ---------------------------------------------------------------- the count across a resume
def _conv_trainer(seed: int = 0):
    """A small conv net whose weight gradients the grid sums in chunks sized by the thread
    count (XPNET_GRID_THREADING=tasks): its rounding depends on the count."""
    import xpnet
    from xpnet.train import Trainer

    rng = xpnet.Generator(seed)
    model = xpnet.Sequential(xpnet.Conv2d(1, 4, 3, padding=1, rng=rng), xpnet.ReLU(),
                             xpnet.Flatten(), xpnet.Linear(4 * 12 * 12, 10, rng=rng))
    model.num_classes = 10
    return Trainer(model, xpnet.Adam(model, lr=1e-2), batch_size=20, seed=seed)


def _conv_data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 1, 12, 12)).astype(np.float32)
    return x, rng.integers(0, 10, 100)


def _weights(trainer):
    import numpy as np

    return {k: np.array(v) for k, v in trainer.model.state_dict().items()}


@pytest.fixture
def tasks_grid(monkeypatch, no_user_threads):
    """NumPy (the grid's chunked path), its blocks spread over the thread count."""
    from conftest import use_backend

    monkeypatch.setenv("XPNET_GRID_THREADING", "tasks")
    with use_backend("numpy"):
        yield no_user_threads


def test_the_thread_count_changes_this_nets_rounding(monkeypatch, tasks_grid):
    """What the resume tests below rest on: 2 threads and 1 give different weights."""
    import numpy as np

    runs = []
    for load in (0.0, 1.0):
        monkeypatch.setattr(threads, "other_load", lambda load=load: load)
        t = _conv_trainer()
        t.fit(*_conv_data(), 1)
        runs.append(_weights(t))
    assert any(not np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_a_resume_trains_with_the_saved_thread_count(monkeypatch, tasks_grid, tmp_path):
    """Saved at 2 threads (a quiet machine); resumed under a load for which the policy would
    take 1: the resumed fit takes 2 again, and equals the uninterrupted run bit for bit."""
    import numpy as np

    from xpnet.io.checkpoint import read_checkpoint_meta

    monkeypatch.setattr(threads, "other_load", lambda: 0.0)
    straight = _conv_trainer()
    straight.fit(*_conv_data(), 2)
    first = _conv_trainer()
    first.fit(*_conv_data(), 1)
    assert first.threads == 2
    path = first.save(tmp_path / "ck.npz")
    assert read_checkpoint_meta(path)["threads"] == 2

    monkeypatch.setattr(threads, "other_load", lambda: 1.0)  # a neighbour took a core
    assert threads.choose_threads(2, threads.other_load()) == 1
    resumed = _conv_trainer()
    resumed.resume(path)
    resumed.fit(*_conv_data(), 2)
    assert resumed.threads == 2 and threads.copy_threads() == 2
    assert tasks_grid[-1] == (2, "blas")
    for k, v in _weights(straight).items():
        np.testing.assert_array_equal(_weights(resumed)[k], v, err_msg=k)
    assert read_checkpoint_meta(resumed.save(tmp_path / "again.npz"))["threads"] == 2


def test_a_thread_count_the_user_set_wins_over_the_saved_one_with_one_log_line(
        monkeypatch, tasks_grid, tmp_path, caplog):
    import logging

    monkeypatch.setattr(threads, "other_load", lambda: 0.0)
    first = _conv_trainer()
    first.fit(*_conv_data(), 1)
    path = first.save(tmp_path / "ck.npz")
    calls = len(tasks_grid)

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    resumed = _conv_trainer()
    resumed.resume(path)
    with caplog.at_level(logging.INFO, logger="xpnet"):
        resumed.fit(*_conv_data(), 2)
    said = [r.getMessage() for r in caplog.records if "resuming" in r.getMessage()]
    assert said == ["xpnet: resuming a run trained with 2 threads with 1 threads set by the "
                    "user; the result may differ from an uninterrupted run by rounding "
                    "(unset the thread variables, or set 2, for an exact resume)"]
    assert caplog.records[-1].levelno == logging.INFO  # not shown unless logging is set up
    assert len(tasks_grid) == calls and threads.copy_threads() == 1  # the user's count
    assert resumed.threads == 1

    caplog.clear()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user set the saved count: nothing said
    again = _conv_trainer()
    again.resume(path)
    with caplog.at_level(logging.INFO, logger="xpnet"):
        again.fit(*_conv_data(), 2)
    assert not [r for r in caplog.records if "resuming" in r.getMessage()]


def test_a_checkpoint_without_the_thread_count_resumes_under_the_policy(
        monkeypatch, tasks_grid, tmp_path):
    """An older file of the same format (no 'threads' field) still resumes; the policy
    chooses, as before."""
    import io
    import json
    import zipfile

    import numpy as np

    monkeypatch.setattr(threads, "other_load", lambda: 0.0)
    first = _conv_trainer()
    first.fit(*_conv_data(), 1)
    path = first.save(tmp_path / "ck.npz")
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    meta = json.loads(np.load(io.BytesIO(members["meta.npy"])).tobytes())
    del meta["threads"]
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.frombuffer(json.dumps(meta).encode(), np.uint8))
    members["meta.npy"] = buf.getvalue()
    old = tmp_path / "old.npz"
    with zipfile.ZipFile(old, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    monkeypatch.setattr(threads, "other_load", lambda: 1.0)
    resumed = _conv_trainer()
    resumed.resume(old)
    resumed.fit(*_conv_data(), 2)
    assert resumed.threads == 1 and resumed.epoch == 2


def test_the_policy_sets_torchs_own_pool_on_the_torch_backend(monkeypatch, no_user_threads):
    """torch's convolutions and products run on its intra-op pool, which threadpoolctl's BLAS
    limit does not reach: on the torch backend the policy sets that pool too."""
    torch = pytest.importorskip("torch")
    from conftest import use_backend
    before = torch.get_num_threads()
    try:
        with use_backend("torch"):
            monkeypatch.setattr(threads, "other_load", lambda: 1.0)
            assert threads.adapt_threads() == 1
            assert torch.get_num_threads() == 1
            monkeypatch.setattr(threads, "other_load", lambda: 0.0)
            assert threads.adapt_threads() == 2
            assert torch.get_num_threads() == 2
        torch.set_num_threads(2)
        with use_backend("numpy"):  # another backend leaves torch's pool alone
            monkeypatch.setattr(threads, "other_load", lambda: 1.0)
            assert threads.adapt_threads() == 1
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_count_the_user_set_leaves_torchs_pool_alone(monkeypatch, no_user_threads):
    torch = pytest.importorskip("torch")
    from conftest import use_backend
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        with use_backend("torch"):
            monkeypatch.setattr(threads, "other_load", lambda: 1.0)
            assert threads.adapt_threads() is None
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
