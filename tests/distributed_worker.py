"""Run under ``mpiexec -n 2`` by tests/test_distributed.py: one scenario per launch.

``collectives``: gradient averaging per dtype and bucket size on numpy, torch and
array_api_strict; broadcast of model and optimizer; the checksum check; synchronised BatchNorm
against one process on the whole batch. Prints one ``OK <n checks>`` line from rank 0.
``raise`` / ``collective`` / ``sigkill``: fault handling (the job must end, non-zero).
"""

from __future__ import annotations

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

BACKENDS = tuple(os.environ.get("XPNET_TEST_BACKENDS", "numpy,torch,array_api_strict")
                 .split(","))  # benchmarks/gpu_check.sh runs cupy (one GPU per rank)


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
