"""Threads and workspaces (xpnet/threads.py): reusable arrays, the copy thread count, the
thread pool, and ranks sharing a node's cores."""

from __future__ import annotations

import os

import numpy as np
from conftest import dev

from xpnet import threads


def test_workspace_reuses_shares_and_reallocates(backend):
    xp = backend.xp
    like = dev(np.zeros(1))
    ws = threads.Workspace()
    a, fresh = ws.get("k", (2, 3), like.dtype, xp=xp, like=like)
    assert fresh
    b, fresh = ws.get("k", (3, 2), like.dtype, xp=xp, like=like)  # same size: a view
    assert not fresh and tuple(b.shape) == (3, 2)
    _, fresh = ws.get("k", (4, 4), like.dtype, xp=xp, like=like)  # larger: reallocated
    assert fresh
    z, fresh = ws.get("z", (2, 2), like.dtype, xp=xp, like=like, zero=True)
    assert fresh and float(xp.sum(xp.abs(z))) == 0.0
    _, fresh = ws.get("z", (1, 2), like.dtype, xp=xp, like=like, zero=True)
    assert fresh  # zero-kept buffers are reused only at the very same shape
    ws.clear()
    _, fresh = ws.get("k", (2, 3), like.dtype, xp=xp, like=like)
    assert fresh


def test_copy_threads_follows_the_blas_thread_setting(monkeypatch):
    for var in ("XPNET_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    assert threads.copy_threads() >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.copy_threads() == 3
    monkeypatch.setenv("XPNET_NUM_THREADS", "1")
    assert threads.copy_threads() == 1
    seen = []
    threads.in_threads(seen.append, 5)
    assert sorted(seen) == [0, 1, 2, 3, 4]
    monkeypatch.setenv("XPNET_NUM_THREADS", "2")
    seen.clear()
    threads.in_threads(seen.append, 5)
    assert sorted(seen) == [0, 1, 2, 3, 4]


def test_ranks_share_the_cores_unless_the_user_set_a_thread_count(monkeypatch):
    """2 ranks on one node each get cores // 2 threads (BLAS via threadpoolctl, xpnet's copies
    via XPNET_NUM_THREADS); a count the user set is left alone; one rank changes nothing."""
    import threadpoolctl

    calls = []
    monkeypatch.setattr(threadpoolctl, "threadpool_limits", lambda limits: calls.append(limits))
    for var in threads.THREAD_VARIABLES:  # "" counts as unset; undone after the test
        monkeypatch.setenv(var, "")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert threads.share_cores(1) is None and calls == []
    assert threads.share_cores(2) == 4
    assert calls == [4] and os.environ["XPNET_NUM_THREADS"] == "4"
    assert threads.copy_threads() == 4
    monkeypatch.setenv("XPNET_NUM_THREADS", "")
    assert threads.share_cores(16) == 1  # never below one thread
    monkeypatch.setenv("XPNET_NUM_THREADS", "3")  # the user's (or an earlier rank setup's)
    assert threads.share_cores(2) is None and calls == [4, 1]
