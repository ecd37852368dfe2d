"""Data-parallel communication (xpnet/distributed/) and synchronised BatchNorm.

Multi-rank checks launch ``mpiexec -n 2 python tests/distributed_worker.py <scenario>`` as a
subprocess with a timeout (CI can never hang); they are skipped with the reason when mpi4py or
mpiexec is missing. Single-process checks (launcher detection, world size 1, the BatchNorm
gradient with ``sync=True``) run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_gradients_close, dev, require_backend, to_np, use_backend

import xpnet
from xpnet import distributed
from xpnet.data import BatchLoader
from xpnet.gradcheck import check_module
from xpnet.io.checkpoint import read_checkpoint_meta

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"
LAUNCH_TIMEOUT = 120  # seconds for one mpiexec job; a hang fails the test instead of CI


def mpiexec() -> str:
    """Path of mpiexec (the venv's, from the mpich wheel, first), or skip."""
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip('mpi4py is not installed (pip install ".[mpi]")')
    found = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}"
                         f"{os.environ.get('PATH', '')}")
    if found is None:
        pytest.skip("no mpiexec on PATH (pip install mpich, or load the cluster's MPI)")
    return found


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XPNET_", "PMI_", "OMPI_", "MV2_", "PMIX_", "SLURM_"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def launch(*args: str, n: int = 2, timeout: float = LAUNCH_TIMEOUT
           ) -> subprocess.CompletedProcess:
    """Run the worker under ``mpiexec -n n``; a job still running after ``timeout`` seconds
    fails the test (the time limits of the fault tests are these timeouts, not timings)."""
    cmd = [mpiexec(), "-n", str(n), sys.executable, str(WORKER), *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=clean_env(), cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mpiexec {' '.join(args)}: the job did not end within {timeout} s "
                    f"({exc.stderr!r})")


# ---------------------------------------------------------------------- launcher detection
@pytest.mark.parametrize("env, size", [
    ({}, 1),
    ({"PMI_SIZE": "4", "PMI_RANK": "1"}, 4),                   # MPICH/Hydra, Intel MPI, pmi2
    ({"OMPI_COMM_WORLD_SIZE": "8"}, 8),                        # Open MPI
    ({"MV2_COMM_WORLD_SIZE": "2"}, 2),                         # MVAPICH
    ({"PMIX_RANK": "0", "SLURM_STEP_NUM_TASKS": "16"}, 16),   # srun --mpi=pmix
    ({"SLURM_STEP_NUM_TASKS": "16"}, 1),                       # srun without PMIx: no MPI
    ({"PMI_SIZE": "1"}, 1),                                    # a launcher with one process
    ({"PMI_SIZE": "4", "XPNET_DISTRIBUTED": "0"}, 1),          # forced off
])
def test_launcher_world_size_reads_the_launchers_variables(env, size):
    assert distributed.launcher_world_size(env) == size


def test_bad_override_is_refused_naming_the_variable():
    with pytest.raises(ValueError, match=r"XPNET_DISTRIBUTED='yes'.*'0'.*'1'"):
        distributed.launcher_world_size({"XPNET_DISTRIBUTED": "yes"})


def test_one_process_never_imports_mpi4py():
    code = ("import sys, xpnet, xpnet.distributed as d\n"
            "c = d.world(); assert (c.rank, c.size) == (0, 1), c\n"
            "assert isinstance(c, d.SingleProcess), c\n"
            "assert 'mpi4py' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=clean_env(),
                   timeout=60)


def test_single_process_collectives_are_the_identity(backend):
    comm = distributed.SingleProcess()
    model = xpnet.Sequential(xpnet.Linear(3, 2, dtype="float64"))
    params = model.parameters()
    for p in params.values():
        p.grad = dev(np.ones(p.shape))
    before = {k: p.grad for k, p in params.items()}
    distributed.GradientAverager(comm)(params)
    assert all(params[k].grad is before[k] for k in params)  # not even a copy
    assert comm.allreduce_host([2.0, 3.0]) == [2.0, 3.0]
    digest = comm.check_identical(model)  # a SHA-256 of the parameters: changes with them
    assert len(digest) == 64 and int(digest, 16) >= 0
    w = model[0].W
    old = w.data
    w.data = dev(to_np(old) + 1e-12)
    assert comm.check_identical(model) != digest
    w.data = old
    assert comm.check_identical(model) == digest


def test_bucket_bytes_is_validated():
    with pytest.raises(ValueError, match=r"bucket_bytes.*positive.*0"):
        distributed.GradientAverager(distributed.SingleProcess(), bucket_bytes=0)


def test_shard_bounds_cover_every_item_once():
    for n in (0, 1, 7, 100, 101):
        for size in (1, 2, 3, 8):
            bounds = [distributed.shard_bounds(n, r, size) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [e - s for s, e in bounds]
            assert max(sizes) - min(sizes) <= 1


# ---------------------------------------------------------------------- synchronised BatchNorm
@pytest.mark.parametrize("shape", [(6, 3), (3, 3, 2, 3)], ids=["2d", "4d"])
def test_sync_batchnorm_gradcheck_at_world_size_one(backend, shape):
    """sync=True takes the Allreduce path (identity in one process): same gradients."""
    rng = np.random.default_rng(0)
    bn = xpnet.BatchNorm(3, dtype="float64", sync=True)
    bn.gamma.data = dev(1.0 + 0.5 * rng.standard_normal(3))
    bn.beta.data = dev(rng.standard_normal(3))
    x = dev(rng.standard_normal(shape) * 2 + 1)
    assert_gradients_close(check_module(bn, x), {"x", "gamma", "beta"})


def test_sync_batchnorm_matches_per_rank_batchnorm_in_one_process(backend):
    rng = np.random.default_rng(1)
    x, dout = rng.standard_normal((5, 3, 2, 2)), rng.standard_normal((5, 3, 2, 2))
    a, b = xpnet.BatchNorm(3, dtype="float64"), xpnet.BatchNorm(3, dtype="float64", sync=True)
    np.testing.assert_allclose(to_np(b(dev(x))), to_np(a(dev(x))), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_np(b.backward(dev(dout))), to_np(a.backward(dev(dout))),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_np(b.running_var), to_np(a.running_var), rtol=1e-12)
    assert "sync" in repr(b)


def test_sync_must_be_a_bool():
    with pytest.raises(TypeError, match=r"sync must be True or False, got 'yes'"):
        xpnet.BatchNorm(3, sync="yes")


# ---------------------------------------------------------------------- two ranks
def test_two_rank_collectives():
    """Averaging per dtype and bucket size on numpy/torch/array_api_strict, broadcast of model
    and optimizer, checksum mismatch detection, sync BatchNorm vs one process."""
    result = launch("collectives")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("OK")]
    assert len(lines) == 1, result.stdout  # rank 0 alone reports
    assert int(lines[0].split()[1]) > 100, lines


@pytest.mark.gpu
def test_two_rank_collectives_over_nccl():
    """The CuPy path (NCCL, one GPU per local rank): the same collectives scenario on cupy.
    Needs two CUDA GPUs: skipped, with the count found, on a one-GPU machine."""
    mpiexec()
    if importlib.util.find_spec("cupy") is None:
        pytest.skip('CuPy is not installed (pip install "xpnet[cupy12]")')
    import cupy

    try:
        gpus = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver
        pytest.skip(f"no usable CUDA device ({exc})")
    if gpus < 2:
        pytest.skip(f"NCCL between two ranks needs two GPUs, found {gpus}")
    cmd = [mpiexec(), "-n", "2", sys.executable, str(WORKER), "collectives"]
    env = {**clean_env(), "XPNET_TEST_BACKENDS": "cupy"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT,
                            env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sum(ln.startswith("OK") for ln in result.stdout.splitlines()) == 1, result.stdout


def test_each_array_library_gets_its_transport(monkeypatch):
    """The transport table on CPU with a stand-in communicator: NumPy and torch-CPU arrays are
    reduced in their own memory, CuPy arrays over NCCL (or, with a CUDA-aware MPI, straight to
    MPI after a device synchronize), anything else through a host copy."""
    from xpnet.distributed import transports

    calls = []

    class FakeComm:
        MPI = types.SimpleNamespace(IN_PLACE="IN_PLACE", SUM="SUM")
        cuda_aware = False
        comm = types.SimpleNamespace(Allreduce=lambda _, b, op: calls.append(("mpi", b)))

        def nccl(self):
            return types.SimpleNamespace(allreduce_=lambda b: calls.append(("nccl", b)) or b)

    comm, host = FakeComm(), np.ones(3)
    assert transports.allreduce_(comm, host) is host and calls == [("mpi", host)]
    monkeypatch.setattr(transports, "array_library", lambda b: "cupy")
    monkeypatch.setattr(transports, "synchronize", lambda b: calls.append(("sync", b)))
    gpu = object()
    calls.clear()
    assert transports.allreduce_(comm, gpu) is gpu and calls == [("nccl", gpu)]
    comm.cuda_aware = True
    calls.clear()
    assert transports.allreduce_(comm, gpu) is gpu and calls == [("sync", gpu), ("mpi", gpu)]
    monkeypatch.undo()  # the real array_library and synchronize again
    strict = pytest.importorskip("array_api_strict")
    x = strict.ones(3)
    calls.clear()
    out = transports.allreduce_(comm, x)
    assert out is not x and calls[0][0] == "mpi" and isinstance(calls[0][1], np.ndarray)
    torch = pytest.importorskip("torch")
    t = torch.ones(3)
    calls.clear()
    assert transports.allreduce_(comm, t) is t and np.shares_memory(calls[0][1], t.numpy())


@pytest.mark.gpu
def test_nccl_allreduce_on_one_gpu():
    """The NCCL transport on one GPU: a one-rank communicator sums into a second buffer (so
    NCCL really ran), in place, and refuses a dtype NCCL has no type for."""
    require_backend("cupy")
    from xpnet.distributed.nccl import NcclCommunicator

    with use_backend("cupy"):
        comm = NcclCommunicator(1, 0)
        for dtype in ("float16", "float32", "float64", "int32", "int64"):
            host = np.arange(1, 7).astype(dtype)
            x, out = xpnet.to_device(host), xpnet.to_device(np.zeros(6, dtype))
            assert comm.allreduce_(x, out=out) is out
            np.testing.assert_array_equal(to_np(out), host)
            assert comm.allreduce_(x) is x
            np.testing.assert_array_equal(to_np(x), host)
        with pytest.raises(TypeError, match="NCCL allreduce: expected contiguous arrays"):
            comm.allreduce_(xpnet.to_device(np.ones(4, np.int8)))


def test_ranks_that_disagree_all_stop_with_one_message_naming_rank_and_field():
    """Training sets one example apart, batch counts apart, another model or optimizer
    setting: a named ReplicaMismatch on every rank, never MPI's "Message truncated"."""
    result = launch("disagree", timeout=LAUNCH_TIMEOUT)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "OK disagreements refused on every rank" in out and "truncated" not in out, out


def test_a_check_failing_on_one_rank_stops_every_rank_with_its_message():
    """xpnet as a library, no abort: rank 1 alone gets NaN inputs, out-of-range labels or no
    labels (then rank 0 alone bad labels); the refusing rank raises its own error, the other
    RankRefused naming it (asserted in the worker), within the timeout; then both train."""
    result = launch("refuse", timeout=90)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    for r in (0, 1):
        assert f"OK rank {r} stopped with the refusing rank" in out, out
    assert "rank 0 NaN input: RankRefused: rank 1 refused: ValueError: x_train: row 3" in out
    assert "rank 1 NaN input: ValueError: x_train: row 3 holds NaN" in out


def test_an_exception_on_one_rank_ends_the_job_once():
    result = launch("raise", timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert out.count("ValueError: deliberate failure on rank 1") == 1, out
    assert "[rank 1/2]" in out


def test_an_error_every_rank_raises_is_shown_by_rank_0_only():
    result = launch("collective", timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert out.count("ReplicaMismatch: deliberate mismatch") == 1, out
    assert "[rank 0/2]" in out


def test_a_rank_killed_with_sigkill_ends_the_job_within_60_s():
    result = launch("sigkill", timeout=60)
    assert result.returncode != 0, result.stdout + result.stderr


# ---------------------------------------------------------------------- loader shards
@pytest.mark.parametrize("n, bs, size", [(103, 20, 2), (100, 25, 3), (60, 60, 4)])
def test_shards_split_each_global_batch_and_use_every_image_once(n, bs, size):
    x = np.arange(n, dtype=np.float32).reshape(n, 1)
    y = np.arange(n)
    full = [to_np(yb) for _, yb in BatchLoader(x, y, bs, rng=xpnet.Generator(4))]
    shards = [[to_np(yb) for _, yb in BatchLoader(x, y, bs, rng=xpnet.Generator(4),
                                                   shard=(r, size))] for r in range(size)]
    assert all(len(s) == len(full) for s in shards)
    for k, batch in enumerate(full):
        parts = [s[k] for s in shards]
        np.testing.assert_array_equal(np.concatenate(parts), batch)  # rank order = batch order
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    seen = np.concatenate([np.concatenate(s) for s in shards])
    np.testing.assert_array_equal(np.sort(seen), y)  # every image exactly once per epoch


@pytest.mark.parametrize("shard, match", [
    ((2, 2), r"shard: expected \(rank, size\).*\(2, 2\)"),
    ([0, 2], r"shard: expected \(rank, size\).*\[0, 2\]"),
    ((0, 4), r"batch of 3 example\(s\) cannot be split over 4 ranks"),
])
def test_bad_shards_are_refused(shard, match):
    with pytest.raises(ValueError, match=match):
        BatchLoader(np.zeros((23, 1)), np.zeros(23, dtype=np.int64), 10, shard=shard)


# ---------------------------------------------------------------------- the Trainer on 2 ranks
def test_trainer_on_two_ranks_is_one_process_with_the_global_batch(tmp_path):
    """float64, 20 Adam steps: SimpleConvNet and a sync-BatchNorm net (global batch 100 and an
    uneven 99) equal to one process within 1e-10 (parameters and history); a per-rank seed
    refused; different dropout masks per rank; a drifted replica refused at the checkpoint;
    every image once per epoch; straight vs resumed 2-rank runs identical; a 1-process
    checkpoint resumed on 2 ranks. Then the 2-rank checkpoint after epoch 1 resumes here, in
    one process."""
    import distributed_worker as w

    result = launch("trainer", str(tmp_path))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    errors = dict(kv.split("=") for line in result.stdout.splitlines()
                  if line.startswith("ERRORS ") for kv in line.split()[1:])
    assert {k: float(v) for k, v in errors.items()}["plain"] < 1e-10, errors
    assert len(errors) == 13 and "OK 13 checks" in result.stdout, out

    one = distributed.SingleProcess()
    with use_backend("numpy"):
        straight = w.fit(w.small_net(), one, 2)
        resumed = w.fit(w.small_net(), one, 2, checkpoint=str(tmp_path / "ck2.npz"),
                        resume=True)
    assert resumed.history.records[0]["epoch"] == 1 and len(resumed.history) == 2
    assert w.max_error(w.params(resumed.model), w.params(straight.model)) < 1e-10
    np.testing.assert_allclose(resumed.history["test_acc"], straight.history["test_acc"])


def test_a_rank_killed_mid_training_leaves_a_checkpoint_that_resumes(tmp_path):
    """SIGKILL in epoch 2: the job ends non-zero within 60 s, the epoch-1 checkpoint is intact
    and resuming it finishes with the parameters of an uninterrupted run."""
    import distributed_worker as w

    from xpnet.io.checkpoint import load_checkpoint

    result = launch("killed", str(tmp_path), timeout=60)
    assert result.returncode != 0, result.stdout + result.stderr
    ck = tmp_path / "killed.npz"
    assert load_checkpoint(ck).meta["epoch"] == 1
    one = distributed.SingleProcess()
    with use_backend("numpy"):
        resumed = w.fit(w.Recorder(w.small_net()), one, 3, checkpoint=str(ck), resume=True)
        straight = w.fit(w.Recorder(w.small_net()), one, 3)
    assert resumed.epoch == 3
    assert w.max_error(w.params(resumed.model), w.params(straight.model)) < 1e-10


# ---------------------------------------------------------------------- the example under mpiexec
def test_mnist_cnn_under_mpiexec_prints_one_summary_equal_to_one_process():
    data = ROOT.parent / "shared" / "data"
    if not (data / "mnist").is_dir():
        pytest.skip(f"MNIST not found in {data}")
    args = [str(ROOT / "examples" / "mnist_cnn.py"), "--dry-run", "--json", "--data-dir",
            str(data)]
    runs = {}
    for n in (1, 2):
        cmd = [mpiexec(), "-n", str(n), sys.executable, *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT,
                                env=clean_env(), cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1, result.stdout  # rank 0 alone prints, and only the JSON
        runs[n] = json.loads(lines[0])
        assert result.stderr.count("test accuracy") == 1, result.stderr
    assert (runs[1]["world_size"], runs[2]["world_size"]) == (1, 2)
    assert runs[2]["global_batch_size"] == runs[1]["global_batch_size"] == 100
    assert abs(runs[2]["test_accuracy"] - runs[1]["test_accuracy"]) <= 0.003
    assert abs(runs[2]["train_loss"] - runs[1]["train_loss"]) < 1e-5


@pytest.mark.parametrize("sig, code, target", [
    (signal.SIGINT, 130, "group"),      # Ctrl-C in a terminal: the launcher and every rank
    (signal.SIGINT, 130, "launcher"),   # kill -INT of mpiexec, which forwards it
    (signal.SIGTERM, 143, "launcher"),  # a scheduler ending the job
    (signal.SIGTERM, 143, "group"),
])
def test_a_signal_under_mpiexec_ends_the_job_with_one_line_and_the_conventional_code(
        sig, code, target, tmp_path):
    """The example under ``mpiexec -n 2``, signalled after its first checkpoint: the job
    exits 128 + the signal (not the abort's 1), with one 'interrupted' line from one rank, no
    traceback and no MPI abort notice on stderr; the checkpoint holds a finished epoch."""
    data = ROOT.parent / "shared" / "data"
    if not (data / "mnist").is_dir():
        pytest.skip(f"MNIST not found in {data}")
    ck = tmp_path / "ck.npz"
    cmd = [mpiexec(), "-n", "2", sys.executable, str(ROOT / "examples" / "mnist_mlp.py"),
           "--epochs", "1000", "--train-limit", "300", "--data-dir", str(data),
           "--checkpoint", str(ck)]
    proc = subprocess.Popen(cmd, env=clean_env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not ck.exists():  # the first epoch is saved: stop in a later one
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"no checkpoint within {LAUNCH_TIMEOUT} s"
            time.sleep(0.05)
        if target == "group":
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, err
    assert "Traceback" not in err and "MPI_Abort" not in err, err
    # the rank that reports is the first that can: one blocked in a collective with a rank
    # already stopping never sees its signal (rank 0 otherwise; another waits 2 s first)
    said = [line for line in err.splitlines() if "interrupted" in line]
    assert len(said) == 1 and said[0] in [
        f"[rank {r}/2] examples/mnist_mlp.py: interrupted by {sig.name}; {ck} holds the last "
        f"finished epoch; continue with --checkpoint {ck} --resume" for r in (0, 1)], err
    assert read_checkpoint_meta(ck)["epoch"] >= 1


REFUSING_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import common
import xpnet
from xpnet.models import TwoLayerNet
from xpnet.train import Trainer

@common.cli
def main(argv=None):
    comm = xpnet.distributed.world()
    x = np.random.default_rng(0).random((40, 4))
    if comm.rank == 1:
        x[3, 2] = np.nan
    model = TwoLayerNet(4, 8, 2)
    Trainer(model, xpnet.SGD(model, lr=0.1), batch_size=10).fit(x, np.arange(40) % 2, 1)
    return 0

sys.exit(main())
"""


def test_an_example_with_bad_input_on_one_rank_prints_one_line_naming_it(tmp_path):
    """Under the examples' cli, rank 1 alone refusing its input ends the job with exit 1 and
    one line (rank 0's RankRefused naming rank 1 and its error), no traceback."""
    script = tmp_path / "refusing.py"
    script.write_text(REFUSING_SCRIPT)
    cmd = [mpiexec(), "-n", "2", sys.executable, str(script), str(ROOT / "examples")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT,
                            env=clean_env(), cwd=ROOT)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    said = [line for line in result.stderr.splitlines() if "error:" in line]
    assert said == ["[rank 0/2] examples/refusing.py: error: rank 1 refused: ValueError: "
                    "x_train: row 3 holds NaN (1 of 40 rows hold NaN or inf); expected finite "
                    "values: clean or drop those rows; this rank (0) stops with it rather than "
                    "wait"], result.stderr
