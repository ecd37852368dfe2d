"""The example scripts (examples/*.py), run as users run them: in a subprocess.

Every example runs with ``--dry-run --json`` on every CPU backend (ids name it:
``[spiral-numpy]``); the backend-selection and corrupt-data errors exit non-zero with one line on
stderr and no traceback; a checkpoint plus ``--resume`` gives the same numbers as one straight
run; and a ``slow`` test trains SimpleConvNet for real. MNIST comes from ``../shared/data`` next
to the repository; the MNIST examples skip when it is missing, so nothing is ever downloaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xpnet import backend as backend_module

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CPU_BACKENDS = ("numpy", "array_api_strict", "torch")
COMMON_KEYS = {"example", "backend", "backend_version", "device"}

# script -> (uses MNIST, keys its --json summary must have besides COMMON_KEYS)
SCRIPTS = {
    "spiral": (False, {"linear_train_accuracy", "mlp_train_accuracy", "linear_final_loss",
                       "mlp_final_loss"}),
    "moons": (False, {"dataset", "results", "epochs"}),
    "vanishing_gradients": (True, {"table", "histories"}),
    "optimizers": (True, {"table", "histories"}),
    "overfitting": (True, {"results", "histories"}),
    "batchnorm": (True, {"table", "histories"}),
    "mnist_mlp": (True, {"model", "epochs", "test_accuracy", "train_loss", "train_seconds",
                         "images_per_second", "history"}),
    "mnist_cnn": (True, {"model", "epochs", "test_accuracy", "train_loss", "train_seconds",
                         "images_per_second", "history"}),
}


def mnist_dir() -> Path:
    """The shared MNIST folder, or skip the calling test."""
    folder = DATA_DIR / "mnist"
    if not all((folder / f).is_file() for f in MNIST_FILES):
        pytest.skip(f"MNIST not found in {folder}")
    return DATA_DIR


def run_example(script: str, *args: str, backend: str | None = "numpy", threads: int | None = 1,
                timeout: float = 300, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess:
    """Run examples/<script>.py in a subprocess from the repository root.

    ``threads=1`` pins BLAS/OpenMP to one thread: dry runs are tiny, and on a busy 2-core machine
    spinning worker threads only slow them down. ``env`` adds or overrides variables.
    """
    return subprocess.run([sys.executable, str(EXAMPLES / f"{script}.py"), *args], cwd=ROOT,
                          env=example_env(backend, threads, env), capture_output=True,
                          text=True, timeout=timeout)


def example_env(backend: str | None = "numpy", threads: int | None = 1,
                env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment :func:`run_example` gives a script."""
    env = dict(os.environ, **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("XPNET_DEVICE", None)
    env.pop("XPNET_BACKEND", None)
    if backend is not None:
        env["XPNET_BACKEND"] = backend
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = env["MKL_NUM_THREADS"] = \
            str(threads)
    return env


def summary(proc: subprocess.CompletedProcess) -> dict:
    """The JSON object on the last stdout line of a successful run."""
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no stdout\n{proc.stderr[-3000:]}"
    out = json.loads(lines[-1])
    assert isinstance(out, dict)
    return out


def one_line_error(proc: subprocess.CompletedProcess, script: str) -> str:
    """Assert a clean failure: non-zero exit, one 'examples/<script>.py: error:' line, no
    traceback; return that line."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"examples/{script}.py: error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def _require(backend: str) -> None:
    if backend != "numpy":
        pytest.importorskip(backend)


# ---------------------------------------------------------------------------- dry runs
DRY_RUNS = [pytest.param(script, backend, id=f"{script}-{backend}")
            for script in SCRIPTS for backend in CPU_BACKENDS]


@pytest.mark.parametrize(("script", "backend"), DRY_RUNS)
def test_dry_run_json(script, backend, tmp_path):
    _require(backend)
    uses_mnist, keys = SCRIPTS[script]
    args = ["--dry-run", "--json"]
    if uses_mnist:
        args += ["--data-dir", str(mnist_dir())]
    png = tmp_path / f"{script}.png"
    if backend == "numpy":  # the figure does not depend on the backend; draw it once
        args += ["--plot", str(png)]
    out = summary(run_example(script, *args, backend=backend))
    assert COMMON_KEYS | keys <= set(out), sorted(COMMON_KEYS | keys - set(out))
    assert out["example"] == script
    assert out["backend"] == backend
    if backend == "numpy":
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if script in ("mnist_mlp", "mnist_cnn"):
        assert out["epochs"] == 1 and out["train_images"] == 200 and out["test_images"] == 200
        assert 0.0 <= out["test_accuracy"] <= 1.0
        assert out["train_seconds"] > 0 and out["images_per_second"] > 0
        assert len(out["history"]) == 1
    if script == "spiral":
        assert 0.0 <= out["linear_train_accuracy"] <= 1.0
    if script == "moons":
        assert set(out["results"]) == {"1", "2", "3", "4", "5", "20", "50"}


def test_dry_run_deep_convnet():
    out = summary(run_example("mnist_cnn", "--dry-run", "--json", "--model", "deep",
                              "--data-dir", str(mnist_dir())))
    assert out["model"] == "deep" and out["epochs"] == 1


def test_backend_flag_overrides_environment():
    out = summary(run_example("spiral", "--dry-run", "--json", "--backend", "numpy",
                              backend="bogus"))
    assert out["backend"] == "numpy"


# ---------------------------------------------------------------------------- clean errors
@pytest.mark.parametrize("how", ["env", "flag"])
def test_unknown_backend_is_one_line_error(how):
    if how == "env":
        proc = run_example("spiral", "--dry-run", backend="bogus")
    else:
        proc = run_example("spiral", "--dry-run", "--backend", "bogus", backend=None)
    line = one_line_error(proc, "spiral")
    assert "unknown backend 'bogus'" in line
    for name in ("numpy", "cupy", "torch", "array_api_strict"):
        assert name in line


def test_unavailable_cupy_is_one_line_error():
    if backend_module.cuda_status()[0]:
        pytest.skip("CuPy and a CUDA device are usable here")
    line = one_line_error(run_example("spiral", "--dry-run", backend="cupy"), "spiral")
    assert "cupy" in line.lower() and "pip install" in line


def test_truncated_mnist_file_is_one_line_error(tmp_path):
    source = mnist_dir() / "mnist"
    copy = tmp_path / "mnist"
    copy.mkdir()
    for name in MNIST_FILES[1:]:
        (copy / name).symlink_to(source / name)
    data = (source / MNIST_FILES[0]).read_bytes()
    (copy / MNIST_FILES[0]).write_bytes(data[:len(data) // 2])
    proc = run_example("mnist_cnn", "--dry-run", "--data-dir", str(tmp_path))
    assert proc.returncode == 1
    assert MNIST_FILES[0] in one_line_error(proc, "mnist_cnn")


def test_empty_data_dir_is_one_line_error_naming_folder_and_flag(tmp_path):
    """An existing folder without the files: the flag and the folder are named, nothing is
    downloaded (no cache folder appears) and the library's ``data_dir=`` is not mentioned."""
    (tmp_path / "empty").mkdir()
    env_cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = run_example("mnist_mlp", "--dry-run", "--data-dir", str(tmp_path / "empty"),
                       env=env_cache)
    line = one_line_error(proc, "mnist_mlp")
    assert proc.returncode == 1
    assert f"--data-dir {tmp_path / 'empty'} holds no complete mnist set" in line
    assert "data_dir" not in line.replace(str(tmp_path), "TMP")
    assert not (tmp_path / "cache").exists()


def test_xpnet_data_dir_typo_is_one_line_error_naming_the_variable(tmp_path):
    (tmp_path / "cache" / "xpnet" / "mnist").mkdir(parents=True)  # whatever the cache holds
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "XPNET_DATA_DIR": str(tmp_path / "typo")}
    line = one_line_error(run_example("mnist_cnn", "--dry-run", env=env), "mnist_cnn")
    assert f"XPNET_DATA_DIR does not exist: {tmp_path / 'typo'}" in line
    assert "--data-dir" not in line and "data_dir" not in line.replace(str(tmp_path), "TMP")


def test_resume_without_checkpoint_is_usage_error():
    proc = run_example("mnist_cnn", "--resume", "--dry-run")
    assert proc.returncode == 2 and "--resume needs --checkpoint" in proc.stderr


# ---------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("script", ["mnist_cnn", "mnist_mlp"])
def test_resume_matches_straight_run(script, tmp_path):
    data = str(mnist_dir())
    common = ["--train-limit", "1000", "--json", "--data-dir", data]
    straight = summary(run_example(script, "--epochs", "2", *common))
    ck = str(tmp_path / "ck.npz")
    # an interrupted 2-epoch run: the schedule is planned for 2 epochs from the start
    first = summary(run_example(script, "--epochs", "2", "--stop-after", "1", "--checkpoint",
                                ck, *common))
    assert first["epochs"] == 1 and (tmp_path / "ck.npz").is_file()
    resumed = summary(run_example(script, "--epochs", "2", "--checkpoint", ck, "--resume",
                                  *common))
    assert resumed["resumed_from_epoch"] == 1 and resumed["epochs"] == 2
    for key in ("test_accuracy", "test_loss", "train_loss", "train_accuracy"):
        assert resumed[key] == straight[key], key
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in straight["history"]]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed["history"]] == strip



@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_a_run_with_one_line_and_the_conventional_exit_code(sig, code, tmp_path):
    """Ctrl-C or SIGTERM after the first checkpoint: one line saying what was saved and how
    to resume, exit 128 + the signal, no traceback; the resumed run then goes on."""
    ck = tmp_path / "ck.npz"
    common = ["--epochs", "1000", "--train-limit", "300", "--data-dir", str(mnist_dir()),
              "--checkpoint", str(ck)]
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "mnist_mlp.py"), *common],
                            cwd=ROOT, env=example_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ck.exists():  # the first epoch is saved: stop in a later one
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    said = [line for line in err.splitlines() if "interrupted" in line]
    assert said == [f"examples/mnist_mlp.py: interrupted by {sig.name}; {ck} holds the last "
                    f"finished epoch; continue with --checkpoint {ck} --resume"], err
    resumed = run_example("mnist_mlp", *common, "--resume", "--stop-after", "1", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert summary(resumed)["resumed_from_epoch"] >= 1


@pytest.mark.parametrize("script", ["mnist_cnn", "mnist_mlp"])
def test_accumulate_two_half_batches_matches_whole_batches(script):
    """--batch-size 50 --accumulate 2 updates like --batch-size 100 (float32 rounding apart)."""
    common = ["--train-limit", "400", "--json", "--data-dir", str(mnist_dir())]
    whole = summary(run_example(script, "--epochs", "1", "--batch-size", "100", *common))
    halves = summary(run_example(script, "--epochs", "1", "--batch-size", "50",
                                 "--accumulate", "2", *common))
    assert halves["accumulate"] == 2 and whole["accumulate"] == 1
    assert halves["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-4)
    assert halves["test_loss"] == pytest.approx(whole["test_loss"], rel=1e-4)
    proc = run_example(script, "--accumulate", "0", "--dry-run")
    assert proc.returncode == 2 and "--accumulate: expected a positive integer, got 0" in \
        proc.stderr


def test_warmup_must_be_a_fraction():
    proc = run_example("mnist_cnn", "--warmup", "1.5", "--dry-run")
    assert proc.returncode == 2 and "--warmup: expected a fraction in [0, 1), got 1.5" in \
        proc.stderr


def test_resume_with_another_schedule_is_refused(tmp_path):
    """A 1-epoch run annealed to 0 in that epoch; going on with --epochs 2 would follow a
    schedule no uninterrupted run has, so the example says so instead."""
    ck = str(tmp_path / "ck.npz")
    common = ["--train-limit", "300", "--data-dir", str(mnist_dir()), "--checkpoint", ck]
    assert run_example("mnist_mlp", "--epochs", "1", *common).returncode == 0
    proc = run_example("mnist_mlp", "--epochs", "2", "--resume", *common)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "total=3, this one total=6" in proc.stderr
    assert "the same --epochs" in proc.stderr


# ---------------------------------------------------------------------------- flags
@pytest.fixture
def example_parsers(monkeypatch):
    """Each example's parser, captured in-process when ``main(["--help"])`` builds it; the
    example modules (and their ``common``) are dropped from sys.modules afterwards."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    had_common = "common" in sys.modules
    common = importlib.import_module("common")
    made: list[argparse.ArgumentParser] = []
    real = common.make_parser

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(common, "make_parser", recording)
    parsers = {}
    try:
        for script in SCRIPTS:
            spec = importlib.util.spec_from_file_location(f"example_{script}",
                                                          EXAMPLES / f"{script}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            for name in ("train", "evaluate", "main"):
                assert callable(getattr(module, name, None)), f"{script}.py has no {name}()"
            with pytest.raises(SystemExit) as exit_info:
                module.main(["--help"])
            assert exit_info.value.code == 0
            parsers[script] = made[-1]
        yield parsers
    finally:
        if not had_common:
            sys.modules.pop("common", None)


def test_flags_and_help_defaults(example_parsers, capsys):
    common_flags = {"--backend", "--epochs", "--batch-size", "--lr", "--seed", "--dry-run",
                    "--plot", "--json"}
    assert set(example_parsers) == set(SCRIPTS)
    for script, parser in example_parsers.items():
        flags = {s for a in parser._actions for s in a.option_strings}
        assert common_flags <= flags, (script, common_flags - flags)
        if SCRIPTS[script][0]:
            assert {"--data-dir", "--train-limit"} <= flags, script
        if script in ("mnist_mlp", "mnist_cnn"):
            assert {"--checkpoint", "--resume"} <= flags, script
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or "-h" in action.option_strings:
                continue
            assert re.search(r"\(default: [^()]+\)$", action.help or ""), \
                (script, action.option_strings, action.help)
    capsys.readouterr()


def test_help_is_plain_text(example_parsers, capsys):
    common = sys.modules["common"]
    assert common.plain("Uses :func:`xpnet.train.Trainer`, :class:`~xpnet.Adam` and "
                        "``--lr``; see `the book`.") == \
        "Uses xpnet.train.Trainer, xpnet.Adam and --lr; see the book."
    for script, parser in example_parsers.items():
        text = parser.format_help()
        assert "`" not in text and not re.search(r":[a-z]+:", text), (script, text)
    capsys.readouterr()


# ---------------------------------------------------------------------------- real training
@pytest.mark.slow
def test_mnist_cnn_one_epoch_accuracy():
    out = summary(run_example("mnist_cnn", "--epochs", "1", "--train-limit", "6000", "--json",
                              "--data-dir", str(mnist_dir()), threads=None))
    assert out["train_images"] == 6000 and out["test_images"] == 10000
    # measured 0.9285 with the default warm-up + per-step cosine (0.9178 with the old
    # constant-in-epoch rate); the floor leaves room for BLAS rounding differences
    assert out["test_accuracy"] >= 0.92, out["test_accuracy"]


# ---------------------------------------------------------------------------- out of memory
def test_out_of_memory_is_one_line_naming_the_batch_size(monkeypatch, capsys):
    """An allocation that fails mid-run (NumPy's MemoryError, torch's or CuPy's
    OutOfMemoryError) ends an example with one line naming --batch-size and a smaller one."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    had_common = "common" in sys.modules
    common = importlib.import_module("common")
    try:
        class OutOfMemoryError(RuntimeError):  # torch's, by name (a RuntimeError)
            pass

        for error in (MemoryError("Unable to allocate 7.5 GiB"), OutOfMemoryError("CUDA")):
            def main(argv=None, error=error):
                parser = common.make_parser("examples/fake.py", "A fake example.", epochs=1,
                                            lr=0.1, batch_size=100)
                parser.parse_args(argv)
                raise error

            code = common.cli(main)(["--batch-size", "64"])
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 1 and len(err) == 1, err
            assert "out of memory" in err[0] and type(error).__name__ in err[0]
            assert "--batch-size (now 64; try 32)" in err[0]

        def broken(argv=None):
            raise RuntimeError("not a memory problem")

        with pytest.raises(RuntimeError, match="not a memory problem"):  # still a traceback
            common.cli(broken)([])
    finally:
        if not had_common:
            sys.modules.pop("common", None)


def test_is_out_of_memory_knows_each_backends_error():
    from xpnet.backend import is_out_of_memory

    class OutOfMemoryError(MemoryError):  # CuPy's is a MemoryError
        pass

    assert is_out_of_memory(MemoryError()) and is_out_of_memory(OutOfMemoryError())
    assert not is_out_of_memory(RuntimeError("out of range")) and not is_out_of_memory(
        ValueError())
