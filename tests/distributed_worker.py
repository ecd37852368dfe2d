"""Run under ``mpiexec -n 2`` by tests/test_distributed.py: one scenario per launch.

``collectives``: gradient averaging per dtype and bucket size on numpy, torch and
array_api_strict; broadcast of model and optimizer; the checksum check; synchronised BatchNorm
against one process on the whole batch. Prints one ``OK <n checks>`` line from rank 0.
``trainer DIR``: the Trainer on 2 ranks against one process (float64, 20 Adam steps): plain
SimpleConvNet, a synchronised-BatchNorm net, an uneven split; a per-rank seed refused;
per-rank dropout masks; a drifted replica refused at a checkpoint; every image once per epoch;
a straight vs a resumed run; a 1-process checkpoint resumed on 2 ranks. Leaves DIR/ck2.npz (a
2-rank checkpoint after epoch 1) for the test to resume in one process.
``killed DIR``: rank 1 SIGKILLs itself in epoch 2, after the epoch-1 checkpoint.
``raise`` / ``collective`` / ``sigkill``: fault handling (the job must end, non-zero).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import xpnet  # noqa: E402
from xpnet import distributed  # noqa: E402
from xpnet.backend import to_numpy  # noqa: E402


def _installed(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


# tests/test_distributed.py runs cupy (one GPU per rank); by default the CPU backends that are
# installed (torch is optional: the suite uses it when present)
BACKENDS = tuple(os.environ["XPNET_TEST_BACKENDS"].split(",")
                 if os.environ.get("XPNET_TEST_BACKENDS") else
                 (n for n in ("numpy", "torch", "array_api_strict") if _installed(n)))


def use(name: str) -> None:
    device = distributed.device_for_local_rank() if name == "cupy" else None
    xpnet.set_backend(name, device)
checks = 0


def close(a, b, what: str, tol: float = 1e-12) -> None:
    global checks
    a, b = np.asarray(to_numpy(a)), np.asarray(to_numpy(b))
    if a.shape != b.shape or not np.allclose(a, b, rtol=tol, atol=tol):
        raise AssertionError(f"{what}: {a} != {b}")
    checks += 1


def model_with_dtypes() -> xpnet.Module:
    """Parameters in float32 and float64 (one buffer each), sizes 3..24."""
    m = xpnet.Sequential(xpnet.Linear(4, 6, dtype="float64", rng=xpnet.Generator(1)),
                         xpnet.Linear(6, 3, dtype="float32", rng=xpnet.Generator(2)),
                         xpnet.BatchNorm(3, dtype="float64"))
    return m


def fake_grads(model: xpnet.Module, rank: int) -> dict[str, np.ndarray]:
    out = {}
    for i, (name, p) in enumerate(model.parameters().items()):
        host = np.arange(np.prod(p.shape), dtype=np.float64).reshape(p.shape)
        out[name] = (host + i) * (rank + 1) + 0.25 * rank  # differs per rank and per parameter
    return out


def check_averaging(comm: distributed.Communicator) -> None:
    for name in BACKENDS:
        use(name)
        for bucket_bytes, expect_buckets in ((None, 2), (64, None), (10**9, 2)):
            model = model_with_dtypes()
            params = model.parameters()
            avg = distributed.GradientAverager(comm, bucket_bytes=bucket_bytes)
            for step in range(2):  # the second step reuses the planned buffers
                for k, p in params.items():
                    g = fake_grads(model, comm.rank)[k] * (step + 1)
                    p.grad = xpnet.to_device(g, dtype=p.data.dtype)
                avg(params)
                expected = {k: sum(fake_grads(model, r)[k] for r in range(comm.size))
                            / comm.size * (step + 1) for k in params}
                for k, p in params.items():
                    tol = 1e-6 if "float32" in str(p.data.dtype) else 1e-14
                    close(p.grad, expected[k], f"{name} bucket={bucket_bytes} {k}", tol)
                    assert str(p.grad.dtype) == str(p.data.dtype), (k, p.grad.dtype)
            planned = avg.buckets()
            if expect_buckets is not None:
                assert len(planned) == expect_buckets, planned
            else:  # 64-byte buckets: every float64 bucket at most 8 elements unless one param
                assert len(planned) > 2, planned
            assert {d for d, _ in planned} == {str(p.data.dtype) for p in params.values()}
            assert avg.stats["messages"] == 2 * len(planned), avg.stats
            assert sum(n for _, n in planned) == model.num_parameters()


def check_broadcast_and_checksum(comm: distributed.Communicator) -> None:
    xpnet.set_backend("numpy")
    model = model_with_dtypes()
    for p in model.parameters().values():
        p.data = p.data + comm.rank  # ranks start different
    model[2].running_mean = model[2].running_mean + comm.rank
    try:
        comm.check_identical(model)
        raise AssertionError("differing parameters were not detected")
    except distributed.ReplicaMismatch as exc:
        assert "ranks [1]" in str(exc), exc
    comm.broadcast_module(model)
    close(model[0].W.data, xpnet.Linear(4, 6, dtype="float64", rng=xpnet.Generator(1)).W.data,
          "broadcast W")
    close(model[2].running_mean, np.zeros(3), "broadcast buffer")
    comm.check_identical(model)
    opt = xpnet.Adam(model, lr=0.1 * (comm.rank + 1))
    for k, p in model.parameters().items():
        p.grad = xpnet.to_device(fake_grads(model, comm.rank)[k], dtype=p.data.dtype)
    opt.step()  # different grads and lr per rank: different moments
    comm.broadcast_optimizer(opt)
    state = opt.state_dict()
    gathered = comm.allgather_object({k: {s: v.tolist() for s, v in d.items()}
                                      for k, d in state["state"].items()})
    assert gathered[0] == gathered[1] and state["lr"] == 0.1, "optimizer state not broadcast"
    global checks
    checks += 1


def check_sync_batchnorm(comm: distributed.Communicator) -> None:
    """2 ranks x 4 rows with sync=True == 1 process x 8 rows: output, dx, dgamma, running."""
    rng = np.random.default_rng(5)
    for name in BACKENDS:
        use(name)
        for shape in ((8, 3), (4, 3, 2, 2)):
            x = rng.standard_normal(shape) * 2 + 1  # same on both ranks (same seed)
            dout = rng.standard_normal(shape)
            half = shape[0] // 2
            mine = slice(comm.rank * half, (comm.rank + 1) * half)
            ref = xpnet.BatchNorm(3, dtype="float64")
            y_ref = ref(xpnet.to_device(x))
            dx_ref = ref.backward(xpnet.to_device(dout))
            bn = xpnet.BatchNorm(3, dtype="float64", sync=True)
            y = bn(xpnet.to_device(x[mine]))
            dx = bn.backward(xpnet.to_device(dout[mine]))
            close(y, to_numpy(y_ref)[mine], f"{name} sync BN forward {shape}")
            close(dx, to_numpy(dx_ref)[mine], f"{name} sync BN dx {shape}")
            close(bn.running_var, ref.running_var, f"{name} sync BN running var {shape}")
            g = comm.allreduce_(xpnet.to_device(np.array(to_numpy(bn.gamma.grad))))
            close(g, ref.gamma.grad, f"{name} sync BN dgamma (summed over ranks) {shape}")


# ---------------------------------------------------------------------- Trainer on N ranks
N_TRAIN, N_TEST, EPOCH_STEPS = 1000, 301, 10


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Learnable float64 12x12 images: the label is the brightest of 10 patches."""
    rng = np.random.default_rng(0)
    x = rng.random((N_TRAIN + N_TEST, 1, 12, 12))
    y = np.argmax(x[:, 0, :10, :10].reshape(-1, 10, 10).mean(axis=2), axis=1)
    x[:, 0, 0, 0] = np.arange(len(x))  # each image's id, for the once-per-epoch check
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def small_net(bn: bool = False, sync: bool = True) -> xpnet.Module:
    """A SimpleConvNet of 12x12 inputs, or a conv net with BatchNorm after conv and hidden."""
    if not bn:
        from xpnet.models import SimpleConvNet
        return SimpleConvNet((1, 12, 12), filters=4, kernel_size=3, hidden_size=16,
                             dtype="float64", seed=0)
    # No trained bias right before a BatchNorm (the conv bias is left out of the optimizer):
    # its exact gradient is 0, so what Adam would see there is rounding noise, which it
    # normalises into eps-sized steps that differ between any two summation orders.
    rng = xpnet.Generator(0)
    net = xpnet.Sequential(
        xpnet.Conv2d(1, 4, 3, rng=rng, dtype="float64"),
        xpnet.BatchNorm(4, sync=sync, dtype="float64"), xpnet.ReLU(),
        xpnet.Flatten(), xpnet.Linear(400, 16, bias=False, rng=rng, dtype="float64"),
        xpnet.BatchNorm(16, sync=sync, dtype="float64"), xpnet.ReLU(),
        xpnet.Linear(16, 10, rng=rng, dtype="float64"))
    net.frozen = ("0.b",)
    # Adam at lr 1e-2, eps 1e-8 makes this net chaotic at rounding level: a 1e-15 relative
    # change of the initial weights moves its parameters by 6e-9 after 20 steps in ONE process
    # (SimpleConvNet: 2e-15), so 1e-10 could not tell a right reduction from a wrong one.
    # At lr 1e-3, eps 1e-6 that sensitivity is 2e-12.
    net.adam = {"lr": 1e-3, "eps": 1e-6}
    net.num_classes = 10
    return net


def trainer(model: xpnet.Module, comm: distributed.Communicator | None, batch: int = 100,
            checkpoint: str | None = None, accumulate: int = 1):
    from xpnet.train import SaveCheckpoint, Trainer
    frozen = getattr(model, "frozen", ())
    trained = {k: p for k, p in model.parameters().items() if k not in frozen}
    adam = getattr(model, "adam", {"lr": 1e-2})
    return Trainer(model, xpnet.Adam(trained, **adam), batch_size=batch, seed=3, comm=comm,
                   eval_batch_size=64, accumulate=accumulate,
                   callbacks=[SaveCheckpoint(checkpoint)] if checkpoint else [])


def fit(model, comm, epochs: int, batch: int = 100, checkpoint=None, resume=False,
        accumulate: int = 1):
    x, y, xt, yt = data()
    tr = trainer(model, comm, batch, checkpoint, accumulate)
    if resume:
        tr.resume(checkpoint)
    tr.fit(x, y, epochs, x_test=xt, y_test=yt)
    return tr


def params(model: xpnet.Module) -> dict[str, np.ndarray]:
    return {k: np.array(to_numpy(v)) for k, v in model.state_dict().items()}


def max_error(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


class Recorder(xpnet.Module):
    """Wraps a model and records the ids (pixel 0) of the training images it sees."""

    def __init__(self, inner: xpnet.Module):
        super().__init__()
        self.inner = inner
        self.num_classes = inner.num_classes
        self.seen: list[np.ndarray] = []

    def forward(self, x):
        if self.training:
            self.seen.append(np.array(to_numpy(x[:, 0, 0, 0])))
        return self.inner.forward(x)

    def backward(self, dout, *, input_grad: bool = True):
        return self.inner.backward(dout, input_grad=input_grad)


def check_trainer(comm: distributed.Communicator, out: Path) -> dict[str, float]:
    xpnet.set_backend("numpy")
    one = distributed.SingleProcess()
    errors: dict[str, float] = {}
    history_keys = ("loss", "train_acc", "test_loss", "test_acc")
    for name, bn, batch in (("plain", False, 100), ("sync_bn", True, 100),
                            ("sync_bn_uneven_99", True, 99)):
        dist = fit(small_net(bn), comm, 2, batch)  # 2 epochs of 10 steps: 20 Adam steps
        ref = fit(small_net(bn, sync=False), one, 2, batch)
        errors[name] = max_error(params(dist.model), params(ref.model))
        if comm.is_root and os.environ.get("XPNET_WORKER_DEBUG"):
            a, b = params(dist.model), params(ref.model)
            print({k: float(np.max(np.abs(a[k] - b[k]))) for k in a})
        errors[name + "_history"] = max(
            abs(a - b) for k in history_keys for a, b in zip(dist.history[k], ref.history[k]))
        assert errors[name] < 1e-10 and errors[name + "_history"] < 1e-10, (name, errors)
        assert dist.history.steps[-1]["step"] == 2 * (-(-N_TRAIN // batch))

    # gradient accumulation and data parallelism together (both linear gradient hooks):
    # 2 ranks x 2 micro-batches of 50 (25 per rank) step like 1 process x batch 100
    dist = fit(small_net(), comm, 2, 50, accumulate=2)
    ref = fit(small_net(), one, 2, 100)
    errors["accumulate_2x50"] = max_error(params(dist.model), params(ref.model))
    assert errors["accumulate_2x50"] < 1e-10, errors
    assert dist.history.steps[-1]["step"] == ref.history.steps[-1]["step"]

    x, y, _, _ = data()
    try:  # a per-rank seed would break the shared batch order: refused on every rank
        from xpnet.train import Trainer
        m = small_net()
        Trainer(m, xpnet.Adam(m, lr=1e-2), seed=comm.rank, comm=comm).fit(x, y, 1)
        raise AssertionError("a per-rank seed was not refused")
    except distributed.ReplicaMismatch as exc:
        assert "rank 1" in str(exc) and "batch order" in str(exc), exc
    errors["per_rank_seed_refused"] = 0.0

    drop = xpnet.Sequential(xpnet.Flatten(), xpnet.Linear(144, 32, dtype="float64"),
                            xpnet.Dropout(0.5), xpnet.Linear(32, 10, dtype="float64"))
    drop.num_classes = 10
    tr = fit(drop, comm, 1)
    drop.train()
    drop.forward(xpnet.to_device(x[:8]))  # the same rows on both ranks: one more draw each
    masks = comm.allgather_object(np.array(to_numpy(drop[2]._calls[-1].record[0])))
    assert masks[0].shape == masks[1].shape and not np.array_equal(masks[0], masks[1]), \
        "the ranks drew the same dropout masks"
    states = comm.allgather_object(drop[2].rng.get_state())
    assert states[0] == states[1], "dropout RNG states differ between ranks"
    tr.save(out / "dropout.npz")
    errors["dropout_masks_differ"] = 0.0
    if comm.rank == 1:  # a replica drifts: the next checkpoint is refused on every rank
        drop[1].b.data = drop[1].b.data + 1e-12
    try:
        tr.save(out / "drifted.npz")
        raise AssertionError("a drifted replica was saved")
    except distributed.ReplicaMismatch as exc:
        assert "ranks [1]" in str(exc) and "drifted.npz" in str(exc), exc
    assert not (out / "drifted.npz").exists()
    errors["checkpoint_checksum"] = 0.0

    rec = Recorder(small_net())
    fit(rec, comm, 2)
    for epoch in range(2):
        ids = np.concatenate(rec.seen[epoch * EPOCH_STEPS:(epoch + 1) * EPOCH_STEPS])
        every = np.concatenate(comm.allgather_object(ids))
        assert np.array_equal(np.sort(every), np.arange(N_TRAIN)), "an image seen twice"
        assert len(ids) == N_TRAIN // comm.size
    errors["images_once"] = 0.0

    straight = fit(small_net(), comm, 2, checkpoint=str(out / "straight.npz"))
    fit(small_net(), comm, 1, checkpoint=str(out / "ck2.npz"))  # left for the 2 -> 1 test
    import shutil
    if comm.is_root:
        shutil.copy(out / "ck2.npz", out / "ck2-resumed.npz")
    comm.barrier()
    resumed = fit(small_net(), comm, 2, checkpoint=str(out / "ck2-resumed.npz"), resume=True)
    errors["resumed_vs_straight"] = max_error(params(resumed.model), params(straight.model))
    assert errors["resumed_vs_straight"] == 0.0, errors
    for k in history_keys:  # the resumed run's history holds epoch 1 from the checkpoint
        assert resumed.history[k] == straight.history[k], (k, resumed.history[k])

    ck1 = out / f"ck1-rank{comm.rank}.npz"  # a 1-process run's checkpoint, resumed on 2 ranks
    fit(small_net(), one, 1, checkpoint=str(ck1))
    from_one = fit(small_net(), comm, 2, checkpoint=str(ck1), resume=True)
    errors["one_to_two"] = max_error(params(from_one.model), params(straight.model))
    assert errors["one_to_two"] < 1e-10, errors
    return errors


class KillAt(Recorder):
    """Rank 1 kills itself with SIGKILL at training forward number ``at`` (mid-epoch 2)."""

    def __init__(self, inner: xpnet.Module, rank: int, at: int):
        super().__init__(inner)
        self.rank, self.at, self.calls = rank, at, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.rank == 1 and self.calls == self.at:
                os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.forward(x)


def check_disagreements(comm) -> None:
    """Ranks that differ in one setting each: every rank raises the same ReplicaMismatch
    naming rank 1 and the field, before any collective whose sizes could disagree."""
    from xpnet.models import SimpleConvNet
    from xpnet.train import Trainer

    xpnet.set_backend("numpy")
    x, y, _, _ = data()
    r = comm.rank

    def net(hidden=16):
        return SimpleConvNet((1, 12, 12), filters=4, kernel_size=3, hidden_size=hidden,
                             dtype="float64", seed=0)

    cases = {  # field: (model, optimizer settings, examples)
        "dataset size (999 vs 1000)": (net(), {}, 1000 - r),
        "batches per epoch (11 vs 10)": (net(), {}, 100 + r),
        "model structure": (net(16 + r), {}, 1000),
        "optimizer settings": (net(), {"eps": 1e-8 * (1 + r)}, 1000),
    }
    for field, (model, settings, n) in cases.items():
        trainer = Trainer(model, xpnet.Adam(model, lr=1e-2, **settings), batch_size=10,
                          comm=comm)
        try:
            trainer.fit(x[:n], y[:n], 1)
            raise AssertionError(f"ranks differing in {field} were not refused")
        except distributed.ReplicaMismatch as exc:
            said = comm.allgather_object(str(exc))
        assert said[0] == said[1], said
        assert said[0].startswith("rank 1 starts training with another") and field in said[0], \
            said[0]
        assert trainer.epoch == 0 and trainer.step_count == 0


def check_one_rank_refuses(comm) -> None:
    """Used as a library (no abort_on_error): one rank alone gets input its own checks refuse;
    it raises its error, the other a RankRefused naming it, and neither waits; both then
    train together on good input."""
    from xpnet.train import Trainer

    xpnet.set_backend("numpy")
    x, y, _, _ = data()
    x, y = x[:200].reshape(200, -1), y[:200]
    r = comm.rank
    nan_x = x.copy()
    nan_x[3, 5] = np.nan
    bad_y = y.copy()
    bad_y[7] = 10
    cases = {  # the refusing rank: (x, y) it gets, what it raises
        "NaN input": (1, (nan_x, y), "ValueError: x_train: row 3 holds NaN"),
        "label range": (1, (x, bad_y), "ValueError: y_train: row 7 holds label 10"),
        "no labels": (1, (x, 5), "ArgumentTypeError: fit: y_train must be an array"),
        "rank 0": (0, (x, bad_y), "ValueError: y_train: row 7 holds label 10"),
    }
    from xpnet.models import TwoLayerNet

    model = TwoLayerNet(x.shape[1], 16, 10, dtype="float64")
    for case, (who, bad, said) in cases.items():
        trainer = Trainer(model, xpnet.SGD(model, lr=0.1), batch_size=50, comm=comm)
        try:
            trainer.fit(*(bad if r == who else (x, y)), 1)
            raise AssertionError(f"{case}: rank {r} was not stopped")
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
        if r == who:
            assert text.startswith(said), (case, text)
        else:
            assert text.startswith(f"RankRefused: rank {who} refused: {said}"), (case, text)
        assert trainer.epoch == 0 and trainer.step_count == 0
        print(f"rank {r} {case}: {text[:60]}", flush=True)
    trainer = Trainer(model, xpnet.SGD(model, lr=0.1), batch_size=50, comm=comm)
    trainer.fit(x, y, 1)  # the ranks are still in step
    assert trainer.step_count == 4


def main(scenario: str) -> None:
    comm = distributed.world()
    assert comm.size == 2, f"expected 2 ranks, got {comm.size}"
    if scenario == "collectives":
        with distributed.abort_on_error(comm):
            assert comm.local_size == 2 and comm.local_rank == comm.rank
            check_averaging(comm)
            check_broadcast_and_checksum(comm)
            check_sync_batchnorm(comm)
            total = comm.allreduce_host([checks])[0]
            if comm.is_root:
                print(f"OK {int(total)} checks on {comm.size} ranks", flush=True)
    elif scenario == "trainer":
        with distributed.abort_on_error(comm):
            errors = check_trainer(comm, Path(sys.argv[2]))
            if comm.is_root:
                print("ERRORS " + " ".join(f"{k}={v:.3g}" for k, v in errors.items()))
                print(f"OK {len(errors)} checks on {comm.size} ranks", flush=True)
    elif scenario == "killed":  # checkpoint after epoch 1, then rank 1 dies in epoch 2
        xpnet.set_backend("numpy")
        ck = str(Path(sys.argv[2]) / "killed.npz")
        fit(KillAt(small_net(), comm.rank, EPOCH_STEPS + 5), comm, 3, checkpoint=ck)
    elif scenario == "disagree":
        with distributed.abort_on_error(comm):
            check_disagreements(comm)
            if comm.is_root:
                print("OK disagreements refused on every rank", flush=True)
    elif scenario == "refuse":  # no abort_on_error: as a library would be used
        check_one_rank_refuses(comm)
        comm.barrier()
        print(f"OK rank {comm.rank} stopped with the refusing rank", flush=True)
    elif scenario == "raise":
        with distributed.abort_on_error(comm):
            if comm.rank == 1:
                time.sleep(0.2)
                raise ValueError("deliberate failure on rank 1")
            comm.barrier()  # rank 0 waits for a rank that will never come
    elif scenario == "collective":
        with distributed.abort_on_error(comm):
            raise distributed.ReplicaMismatch("deliberate mismatch seen by every rank")
    elif scenario == "sigkill":
        if comm.rank == 1:
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGKILL)
        comm.barrier()
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main(sys.argv[1])
