"""xpnet.data: toy sets, verified MNIST loading (local files and downloads), BatchLoader.

Nothing here touches the internet: the official mirrors are blanked for every test, downloads
come from a local http.server on 127.0.0.1 or file:// URLs serving a tiny IDX set made in
tmp_path, and real MNIST is read from ../shared/data (skipped when that folder is absent).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import shutil
import socket
import threading
import time
from pathlib import Path

import array_api_compat
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xpnet
from xpnet import backend as backend_module
from xpnet.data import (
    BatchLoader,
    DataError,
    DownloadError,
    Source,
    circles,
    load_fashion_mnist,
    load_mnist,
    moons,
    spiral,
)
from xpnet.data import mnist as mnist_module
from xpnet.data.loader import fits_on_device

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FILES = mnist_module.FILES
TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = FILES

needs_mnist = pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(),
                                 reason=f"real MNIST not found at {SHARED_DATA / 'mnist'}")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """An empty cache, no XPNET_DATA_DIR, and no official mirrors: no test can download."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("XPNET_DATA_DIR", raising=False)
    for name in ("MNIST", "FASHION_MNIST"):
        blanked = dataclasses.replace(getattr(mnist_module, name), mirrors=())
        monkeypatch.setattr(mnist_module, name, blanked)


# --------------------------------------------------------------------------- synthetic sets

@pytest.mark.parametrize("make, n, k", [
    (lambda **kw: spiral(50, 4, **kw), 200, 4),
    (lambda **kw: moons(101, **kw), 101, 2),
    (lambda **kw: circles(100, **kw), 100, 2),
], ids=["spiral", "moons", "circles"])
def test_synthetic_shapes_dtypes_balanced_reproducible(make, n, k):
    X, y = make(seed=3)
    assert X.shape == (n, 2) and X.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    counts = np.bincount(y, minlength=k)
    assert len(counts) == k and counts.max() - counts.min() <= 1
    X2, y2 = make(seed=3)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(make(seed=4)[0], X)


def test_spiral_follows_cs231n():
    n, k = 100, 3
    X, y = spiral(n, k, noise=0.2)
    r = np.linspace(0, 1, n)
    for j in range(k):
        np.testing.assert_array_equal(y[n * j:n * (j + 1)], j)
        np.testing.assert_allclose(np.hypot(X[y == j, 0], X[y == j, 1]), r, atol=1e-6)
    assert np.hypot(X[:, 0], X[:, 1]).min() == 0.0
    assert np.hypot(X[:, 0], X[:, 1]).max() == pytest.approx(1.0)
    X0, _ = spiral(n, k, noise=0.0)  # without noise: angles linspace(4j, 4(j+1))
    t = np.linspace(4, 8, n)
    np.testing.assert_allclose(X0[n:2 * n], np.c_[r * np.sin(t), r * np.cos(t)], atol=1e-6)


def test_moons_and_circles_geometry_without_noise():
    X, y = moons(40, noise=0.0)
    np.testing.assert_allclose(np.hypot(X[y == 0, 0], X[y == 0, 1]), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.hypot(X[y == 1, 0] - 1, X[y == 1, 1] - 0.5), 1.0, atol=1e-6)
    assert (X[y == 0, 1] >= -1e-6).all() and (X[y == 1, 1] <= 0.5 + 1e-6).all()
    X, y = circles(40, noise=0.0, factor=0.3)
    np.testing.assert_allclose(np.hypot(X[y == 0, 0], X[y == 0, 1]), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.hypot(X[y == 1, 0], X[y == 1, 1]), 0.3, atol=1e-6)
    assert len(np.unique(y[:20])) == 2  # shuffled, as scikit-learn does by default


@pytest.mark.parametrize("call, fn, name", [
    (lambda: spiral(0), "spiral", "n_per_class"),
    (lambda: spiral(10, 0), "spiral", "n_classes"),
    (lambda: spiral(10, 2.5), "spiral", "n_classes"),
    (lambda: spiral(noise=-0.1), "spiral", "noise"),
    (lambda: moons(1), "moons", "n"),
    (lambda: moons(True), "moons", "n"),
    (lambda: moons(noise=float("nan")), "moons", "noise"),
    (lambda: circles(factor=1.0), "circles", "factor"),
    (lambda: circles(factor=0), "circles", "factor"),
    (lambda: circles(noise=-1), "circles", "noise"),
])
def test_synthetic_validation(call, fn, name):
    with pytest.raises(ValueError, match=rf"^{fn}: {name} must be .*, got "):
        call()


# --------------------------------------------------------------------------- real MNIST

@pytest.fixture(scope="module")
def real_mnist():
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real MNIST not found at {SHARED_DATA / 'mnist'}")
    return load_mnist(SHARED_DATA / "mnist", download=False, source=dataclasses.replace(
        mnist_module.MNIST, mirrors=()))


@needs_mnist
def test_real_mnist_shapes_dtypes_ranges(real_mnist):
    x_train, y_train, x_test, y_test = real_mnist
    assert x_train.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert y_train.dtype == y_test.dtype == np.int64
    for x in (x_train, x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    for y in (y_train, y_test):
        assert set(np.unique(y)) == set(range(10))
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first training labels


@needs_mnist
def test_real_mnist_parent_dir_flatten_and_train_limit(real_mnist):
    x_train, y_train, x_test, _ = load_mnist(SHARED_DATA, download=False, flatten=True,
                                             train_limit=1000)
    assert x_train.shape == (1000, 784) and y_train.shape == (1000,)
    assert x_test.shape == (10000, 784)
    np.testing.assert_array_equal(x_train, real_mnist[0][:1000].reshape(1000, 784))
    np.testing.assert_array_equal(y_train, real_mnist[1][:1000])


@needs_mnist
@pytest.mark.parametrize("sub", ["", "mnist"], ids=["parent", "folder"])
def test_real_mnist_from_env(monkeypatch, real_mnist, sub):
    monkeypatch.setenv("XPNET_DATA_DIR", str(SHARED_DATA / sub))
    x_train, y_train, _, y_test = load_mnist(download=False, train_limit=10)
    np.testing.assert_array_equal(y_train, real_mnist[1][:10])
    np.testing.assert_array_equal(y_test, real_mnist[3])


@needs_mnist
def test_real_mnist_train_limit_validation():
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="train_limit"):
            load_mnist(SHARED_DATA, download=False, train_limit=bad)
    with pytest.raises(ValueError, match="holds only 60000"):
        load_mnist(SHARED_DATA, download=False, train_limit=60001)


@pytest.fixture
def mnist_copy(tmp_path):
    """A writable copy of the real four files."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real MNIST not found at {SHARED_DATA / 'mnist'}")
    folder = tmp_path / "copy"
    folder.mkdir()
    for f in FILES:
        shutil.copyfile(SHARED_DATA / "mnist" / f, folder / f)
    return folder


def _rewrite(path: Path, edit) -> None:
    """Decompress path, apply edit to a bytearray of its content, recompress in place."""
    data = bytearray(gzip.decompress(path.read_bytes()))
    edit(data)
    path.write_bytes(gzip.compress(bytes(data)))


def test_truncated_train_images(mnist_copy):
    path = mnist_copy / TRAIN_IMAGES
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(DataError, match="truncated") as info:
        load_mnist(mnist_copy, download=False)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_corrupted_byte(mnist_copy):
    path = mnist_copy / TEST_IMAGES
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt") as info:
        load_mnist(mnist_copy, download=False)
    assert str(path) in str(info.value)


def test_wrong_magic(mnist_copy):
    path = mnist_copy / TEST_LABELS

    def edit(data):
        data[3] = 0x03  # the images magic in the labels file

    _rewrite(path, edit)
    with pytest.raises(DataError, match="wrong IDX magic number 0x00000803") as info:
        load_mnist(mnist_copy, download=False)
    assert str(path) in str(info.value)


def test_checksum_mismatch_on_intact_gzip(mnist_copy):
    path = mnist_copy / TEST_LABELS

    def edit(data):
        data[8] = (data[8] + 1) % 10  # a different but valid first label

    _rewrite(path, edit)
    with pytest.raises(DataError, match="sha256 of the content is") as info:
        load_mnist(mnist_copy, download=False)
    assert str(path) in str(info.value)


def test_recompressed_copy_is_accepted(mnist_copy):
    """The uncompressed digest identifies the content whatever gzip wrote the bytes."""
    path = mnist_copy / TEST_LABELS
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1))
    *_, y_test = load_mnist(mnist_copy, download=False, train_limit=1)
    assert y_test.shape == (10000,)


# --------------------------------------------------------------------------- tiny IDX sets

def _idx(arr: np.ndarray, magic: int) -> bytes:
    dims = b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return magic.to_bytes(4, "big") + dims + arr.astype(np.uint8).tobytes()


def make_tiny(folder: Path, n_train: int = 20, n_test: int = 10, seed: int = 0, *,
              n_train_labels: int | None = None, rows: int = 28, label_max: int = 9,
              trailing: bytes = b"") -> dict:
    """Write a tiny, valid-looking set of the four files; return {name: content sha256}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    contents = {
        TRAIN_IMAGES: _idx(rng.integers(0, 256, (n_train, rows, 28)), 0x803) + trailing,
        TRAIN_LABELS: _idx(rng.integers(0, label_max + 1, n_train_labels or n_train), 0x801),
        TEST_IMAGES: _idx(rng.integers(0, 256, (n_test, 28, 28)), 0x803),
        TEST_LABELS: _idx(rng.integers(0, 10, n_test), 0x801),
    }
    for name, data in contents.items():
        (folder / name).write_bytes(gzip.compress(data))
    return {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}


def tiny_source(sha256: dict, *mirrors: str) -> Source:
    return Source(name="tiny", mirrors=tuple(mirrors), sha256=sha256)


def test_tiny_set_roundtrip(tmp_path):
    sums = make_tiny(tmp_path / "tiny")
    x_train, y_train, x_test, y_test = load_mnist(tmp_path, source=tiny_source(sums),
                                                  download=False)
    raw = gzip.decompress((tmp_path / "tiny" / TRAIN_IMAGES).read_bytes())
    expect = np.frombuffer(raw, np.uint8, offset=16).reshape(20, 1, 28, 28) / np.float32(255)
    np.testing.assert_array_equal(x_train, expect)
    assert x_train.shape == (20, 1, 28, 28) and x_test.shape == (10, 1, 28, 28)
    assert y_train.shape == (20,) and y_test.shape == (10,)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_train_labels": 19}, "holds 20 images but .* holds 19 labels"),
    ({"rows": 27}, "images are 27x28, expected 28x28"),
    ({"label_max": 10}, r"label 10 out of range 0\.\.9"),
    ({"trailing": b"\0\0"}, "has trailing bytes"),
], ids=["count-mismatch", "wrong-dims", "label-range", "trailing"])
def test_tiny_set_structural_errors(tmp_path, kwargs, match):
    make_tiny(tmp_path, **kwargs)
    src = tiny_source({})  # no digests: the structural checks alone must catch these
    with pytest.raises(DataError, match=match) as info:
        load_mnist(tmp_path, source=src, download=False)
    assert str(tmp_path) in str(info.value)


def test_fashion_uses_its_folder_and_gz_md5(tmp_path, monkeypatch):
    make_tiny(tmp_path / "fashion-mnist")
    md5 = {f: hashlib.md5((tmp_path / "fashion-mnist" / f).read_bytes()).hexdigest()
           for f in FILES}
    fashion = dataclasses.replace(mnist_module.FASHION_MNIST, gz_md5=md5)
    monkeypatch.setattr(mnist_module, "FASHION_MNIST", fashion)
    x_train, *_ = load_fashion_mnist(tmp_path, download=False, flatten=True)
    assert x_train.shape == (20, 784)
    with pytest.raises(FileNotFoundError):  # MNIST looks in mnist/, which is not there
        load_mnist(tmp_path, download=False)
    path = tmp_path / "fashion-mnist" / TEST_LABELS
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1))
    with pytest.raises(DataError, match="md5 of the .gz file is") as info:
        load_fashion_mnist(tmp_path, download=False)
    assert str(path) in str(info.value)


def test_given_folder_without_the_files_is_an_error_naming_it(tmp_path, monkeypatch):
    """A folder the caller named that lacks the files never falls through to
    $XPNET_DATA_DIR, the cache or a download, even when those hold a set."""
    sums = make_tiny(tmp_path / "env" / "tiny")
    make_tiny(tmp_path / "cache" / "xpnet" / "tiny")
    monkeypatch.setenv("XPNET_DATA_DIR", str(tmp_path / "env"))
    (tmp_path / "given").mkdir()
    for kwargs, name in (({}, "data_dir"), ({"data_dir_name": "--data-dir"}, "--data-dir")):
        with pytest.raises(FileNotFoundError) as info:
            load_mnist(tmp_path / "given", source=tiny_source(sums), **kwargs)
        msg = str(info.value)
        assert msg.startswith(f"{name} {tmp_path / 'given'} holds no complete tiny set"), msg
        assert f"{tmp_path / 'given'} has none of them" in msg
        assert f"omit {name} to use XPNET_DATA_DIR" in msg
        assert "[Errno" not in msg
    with pytest.raises(FileNotFoundError, match="--data-dir does not exist: "):
        load_mnist(tmp_path / "typo", source=tiny_source(sums), data_dir_name="--data-dir")


def test_given_folder_with_some_files_names_the_missing_ones(tmp_path):
    sums = make_tiny(tmp_path / "given")
    (tmp_path / "given" / TEST_LABELS).unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path / "given", source=tiny_source(sums))
    assert f"{tmp_path / 'given'} has no {TEST_LABELS}" in str(info.value)


@pytest.mark.parametrize("setup", ["missing", "empty", "file"])
def test_xpnet_data_dir_is_treated_like_data_dir(tmp_path, monkeypatch, setup):
    """A typo in XPNET_DATA_DIR is an error naming the variable, not a silent run on whatever
    the cache holds."""
    sums = make_tiny(tmp_path / "cache" / "xpnet" / "tiny")
    env = tmp_path / "env"
    if setup == "empty":
        env.mkdir()
    elif setup == "file":
        env.write_text("not a folder")
    monkeypatch.setenv("XPNET_DATA_DIR", str(env))
    with pytest.raises((FileNotFoundError, NotADirectoryError)) as info:
        load_mnist(source=tiny_source(sums), data_dir_name="--data-dir")
    msg = str(info.value)
    assert msg.startswith("XPNET_DATA_DIR") and str(env) in msg, msg
    assert "--data-dir" not in msg
    if setup == "empty":
        assert "unset XPNET_DATA_DIR to download them into" in msg


def test_not_found_in_cache_without_download(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(download=False, data_dir_name="--data-dir")
    msg = str(info.value)
    assert f"the cache {tmp_path / 'cache' / 'xpnet' / 'mnist'} lacks" in msg
    assert "pass it as --data-dir (or set XPNET_DATA_DIR)" in msg
    assert "download=True" in msg


# --------------------------------------------------------------------------- untrusted files

def _gz_members(*parts: bytes) -> bytes:
    """A multi-member gzip file (as ``cat a.gz b.gz`` makes), which gzip readers accept."""
    return b"".join(gzip.compress(p, compresslevel=1) for p in parts)


def test_header_declaring_more_than_the_set_holds_is_refused(tmp_path):
    make_tiny(tmp_path)
    header = (0x803).to_bytes(4, "big") + (2**32 - 1).to_bytes(4, "big") + \
        (28).to_bytes(4, "big") * 2
    (tmp_path / TRAIN_IMAGES).write_bytes(gzip.compress(header + bytes(784 * 3)))
    with pytest.raises(DataError, match="declares 4294967295 images, more than the 60000 a "
                       "tiny train-images-idx3-ubyte.gz holds; refused before decompressing"):
        load_mnist(tmp_path, source=tiny_source({}))
    make_tiny(tmp_path)  # valid again; now the limit is below the tiny test set's 10
    small = dataclasses.replace(tiny_source({}), max_test=9)
    with pytest.raises(DataError, match="declares 10 labels, more than the 9"):
        load_mnist(tmp_path, source=small)


_BOMB_CHILD = """
import gzip, sys
from xpnet.data import DataError, Source, load_mnist
def kib(field):  # this process's own peak: getrusage's ru_maxrss survives exec, starting at
    # the forked test process's peak, which could hide any growth
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
before = kib("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak so far := now
except OSError:
    pass  # then the imports' peak counts too: stricter, never laxer
try:
    load_mnist(sys.argv[1], source=Source(name="bomb", mirrors=()))
except DataError as exc:
    print("DataError:", exc)
grown = kib("VmHWM") - before
print("grown_kib", grown)
"""


def test_gzip_bomb_takes_bounded_memory(tmp_path):
    """About 1 MB of gzip that inflates to 1 GiB behind a valid header: the reader stops
    after the 60000 images the header declares (47 MB) and refuses the trailing bytes; peak
    memory, measured in a fresh process, stays far below what inflating it all would take."""
    import subprocess
    import sys

    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc/self/status to read the peak memory from")
    make_tiny(tmp_path)
    header = (0x803).to_bytes(4, "big") + (60000).to_bytes(4, "big") + \
        (28).to_bytes(4, "big") * 2
    zeros = gzip.compress(bytes(64 << 20), compresslevel=9)
    bomb = gzip.compress(header, compresslevel=1) + zeros * 16  # 16 x 64 MiB of zeros
    assert len(bomb) < 2 << 20
    (tmp_path / TRAIN_IMAGES).write_bytes(bomb)
    proc = subprocess.run([sys.executable, "-c", _BOMB_CHILD, str(tmp_path)],
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "has trailing bytes" in proc.stdout, proc.stdout
    grown_mib = int(proc.stdout.split("grown_kib")[1]) / 1024
    assert grown_mib < 200, f"loading a {len(bomb)}-byte file grew the peak RSS by " \
        f"{grown_mib:.0f} MiB"


def _tiny_labels(n: int = 10) -> bytes:
    return _idx(np.arange(n) % 10, 0x801)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(magic=st.sampled_from([0x801, 0x803, 0x0801_0000, 0]),
       count=st.one_of(st.integers(0, 12), st.integers(12, 2**32 - 1)),
       payload=st.integers(0, 30))
def test_crafted_label_headers_are_classified_before_inflating(magic, count, payload):
    """Any IDX labels header with any payload length: accepted only when it is consistent;
    otherwise the one DataError for what is wrong, the oversized count refused from the
    header alone."""
    import tempfile

    src = dataclasses.replace(tiny_source({}), max_test=12)
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        make_tiny(folder)
        content = magic.to_bytes(4, "big") + count.to_bytes(4, "big") + \
            bytes(min(payload, 10) * [3])
        (folder / TEST_LABELS).write_bytes(gzip.compress(content + bytes(max(0, payload - 10))))
        if magic == 0x801 and count == payload == 10:  # the tiny set has 10 test images
            *_, y_test = load_mnist(folder, source=src)
            assert y_test.tolist() == [3] * 10
            return
        with pytest.raises(DataError) as info:
            load_mnist(folder, source=src)
        msg = str(info.value)
        assert str(folder / TEST_LABELS) in msg, msg
        if magic != 0x801:
            assert "wrong IDX magic number" in msg
        elif count > 12:
            assert f"declares {count} labels, more than the 12" in msg
        elif payload < count:
            assert "truncated" in msg
        elif payload > count:
            assert "has trailing bytes" in msg
        else:
            assert f"holds {count} labels; the two files do not belong together" in msg


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_garbled_or_truncated_gzip_is_refused_or_exact(data):
    """Any truncation or byte change of a valid file: a DataError naming the file, or (a change
    in the gzip header's free fields) exactly the original content. Never another exception."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        sums = make_tiny(folder, n_train=3, n_test=4)
        src = tiny_source(sums)
        name = data.draw(st.sampled_from(FILES))
        raw = bytearray((folder / name).read_bytes())
        if data.draw(st.booleans()):
            raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
        else:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
        want = load_mnist(folder, source=src)
        (folder / name).write_bytes(bytes(raw))
        try:
            got = load_mnist(folder, source=src)
        except DataError as exc:
            assert str(folder / name) in str(exc)
        else:
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- downloads

class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; paths under /short/ send half the file under the full Content-Length."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        if self.path.startswith("/trickle/"):
            return self._trickle(Path(self.directory) / self.path[len("/trickle/"):])
        if not self.path.startswith("/short/"):
            return super().do_GET()
        body = (Path(self.directory) / self.path[len("/short/"):]).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2])
        self.close_connection = True

    def _trickle(self, path: Path) -> None:
        """One byte every 50 ms, each well inside any read timeout, for at most 8 s, then the
        connection closes: a mirror too slow to finish, bounded so no test can hang."""
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.close_connection = True
        for i in range(min(len(body), 160)):
            try:
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
            except OSError:  # the client gave up
                return
            time.sleep(0.05)


@pytest.fixture
def served(tmp_path):
    """(sha256 sums, base URL) of a tiny set served over HTTP on 127.0.0.1."""
    sums = make_tiny(tmp_path / "served")
    handler = functools.partial(_Handler, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield sums, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url():
    """A URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _cache(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "xpnet" / "tiny"


def test_download_falls_back_to_next_mirror(tmp_path, served, closed_port_url):
    sums, url = served
    src = tiny_source(sums, closed_port_url, url + "missing/", url + "short/", url)
    x_train, y_train, x_test, y_test = load_mnist(source=src, progress=False)
    assert x_train.shape == (20, 1, 28, 28) and y_test.shape == (10,)
    cache = _cache(tmp_path)
    assert sorted(p.name for p in cache.iterdir()) == sorted(FILES)  # no .part left over
    for f in FILES:
        assert (cache / f).read_bytes() == (tmp_path / "served" / f).read_bytes()
    again = load_mnist(source=dataclasses.replace(src, mirrors=()), download=False)
    np.testing.assert_array_equal(again[0], x_train)


def test_download_from_file_urls_with_progress_bar(tmp_path, capsys):
    sums = make_tiny(tmp_path / "mirror")
    src = tiny_source(sums, (tmp_path / "mirror").as_uri() + "/")
    _, y_train, _, _ = load_mnist(source=src, progress=True)
    assert y_train.shape == (20,)
    assert TRAIN_IMAGES in capsys.readouterr().err  # the tqdm bar names the file


def test_download_only_fetches_missing_files(tmp_path, served):
    sums, url = served
    cache = _cache(tmp_path)
    cache.mkdir(parents=True)
    shutil.copyfile(tmp_path / "served" / TEST_LABELS, cache / TEST_LABELS)
    (tmp_path / "served" / TEST_LABELS).unlink()  # the mirror no longer has it
    load_mnist(source=tiny_source(sums, url), progress=False)
    assert sorted(p.name for p in cache.iterdir()) == sorted(FILES)


def test_download_checksum_mismatch_leaves_nothing(tmp_path, served):
    sums, url = served
    bad = dict(sums, **{TRAIN_IMAGES: "0" * 64})
    with pytest.raises(DownloadError) as info:
        load_mnist(source=tiny_source(bad, url), progress=False)
    msg = str(info.value)
    assert f"{url}{TRAIN_IMAGES}" in msg and "sha256 of the content is" in msg
    assert list(_cache(tmp_path).iterdir()) == []


def test_download_all_mirrors_fail(tmp_path, served, closed_port_url):
    sums, url = served
    src = tiny_source(sums, closed_port_url, url + "missing/", url + "short/")
    with pytest.raises(DownloadError) as info:
        load_mnist(source=src, progress=False)
    msg = str(info.value)
    assert f"{closed_port_url}{TRAIN_IMAGES}: " in msg
    assert f"{url}missing/{TRAIN_IMAGES}: HTTP 404" in msg
    assert f"{url}short/{TRAIN_IMAGES}: " in msg and "incomplete" in msg
    assert "data_dir=" in msg and "XPNET_DATA_DIR" in msg
    assert list(_cache(tmp_path).iterdir()) == []


def test_trickling_mirror_hits_the_deadline_and_the_next_mirror_serves(tmp_path, served,
                                                                       monkeypatch):
    sums, url = served
    monkeypatch.setattr(mnist_module, "DEADLINE", 1.0)  # the trickle lasts up to 8 s
    src = tiny_source(sums, url + "trickle/", url)
    x_train, *_ = load_mnist(source=src, progress=False)
    assert x_train.shape == (20, 1, 28, 28)
    slow_only = dataclasses.replace(src, name="other", mirrors=(url + "trickle/",))
    with pytest.raises(DownloadError) as info:
        load_mnist(source=slow_only, progress=False)
    assert f"{url}trickle/{TRAIN_IMAGES}: TimeoutError: deadline of 1 s passed" in \
        str(info.value)
    assert [p.name for p in (tmp_path / "cache" / "xpnet").rglob("*.part")] == []


def test_download_larger_than_the_file_can_be_is_refused(tmp_path, served):
    sums, url = served
    path = tmp_path / "served" / TEST_LABELS
    path.write_bytes(path.read_bytes() + bytes(2000))  # the test labels can be ~1.1 kB at most
    src = dataclasses.replace(tiny_source(sums, url), max_test=10)
    with pytest.raises(DownloadError) as info:
        load_mnist(source=src, progress=False)
    assert f"{url}{TEST_LABELS}: OSError: the mirror announces" in str(info.value)
    assert f"a tiny {TEST_LABELS} can take" in str(info.value)


_TRICKLE_CHILD = """
import sys
from xpnet.data import Source, load_mnist
load_mnist(source=Source(name="tiny", mirrors=(sys.argv[1],)), progress=False)
"""


def test_part_file_of_a_killed_download_is_swept(tmp_path, served):
    """kill -9 during a download leaves its .part file; the next download removes it once it
    is older than any live download can be, and leaves a fresh one (another process's) alone."""
    import os
    import signal
    import subprocess
    import sys

    sums, url = served
    cache = _cache(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    child = subprocess.Popen([sys.executable, "-c", _TRICKLE_CHILD, url + "trickle/"], env=env)
    try:
        for _ in range(600):  # wait (up to 60 s on a busy machine) for its .part file
            parts = list(cache.glob(".*.part")) if cache.is_dir() else []
            if parts or child.poll() is not None:
                break
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert len(parts) == 1, "the child never started its download"
    stale = parts[0]
    assert stale.exists()  # what a killed process leaves
    old = time.time() - mnist_module.DEADLINE - 2 * mnist_module.TIMEOUT - 10
    os.utime(stale, (old, old))
    fresh = cache / f".{TEST_LABELS}.live.part"
    fresh.write_bytes(b"a download in progress elsewhere")
    load_mnist(source=tiny_source(sums, url), progress=False)
    assert not stale.exists()
    assert fresh.exists()
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == \
        sorted(FILES)


def test_no_mirrors_is_a_clear_error():
    with pytest.raises(DownloadError, match="no mirrors configured"):
        load_mnist(progress=False)


# --------------------------------------------------------------------------- BatchLoader

def _numbered(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Examples whose single feature is their own index, so order is visible."""
    return np.arange(n, dtype=np.float32)[:, None], np.arange(n)


def _epoch(loader) -> tuple[list[np.ndarray], list[np.ndarray]]:
    xs, ys = [], []
    for xb, yb in loader:
        xs.append(xpnet.to_numpy(xb))
        ys.append(xpnet.to_numpy(yb))
    return xs, ys


@pytest.mark.parametrize("resident", ["auto", False, True])
def test_loader_batches_on_backend_device(backend, resident):
    x, y = _numbered(10)
    loader = BatchLoader(x, y, 4, rng=xpnet.Generator(0),  # backend: the current one
                         resident=resident)
    assert loader.backend is backend
    if resident == "auto":  # resident on a GPU with room for the data, never on a CPU backend
        assert loader.resident is fits_on_device(x.nbytes + y.nbytes, backend)
        if backend.name in ("numpy", "array_api_strict"):
            assert not loader.resident
    else:
        assert loader.resident is resident
    for xb, yb in loader:
        for a, dtype in ((xb, backend.xp.float32), (yb, backend.xp.int64)):
            assert array_api_compat.array_namespace(a) is backend.xp
            assert array_api_compat.device(a) == backend.device
            assert a.dtype == dtype


@pytest.mark.parametrize("resident", [False, True], ids=["host", "resident"])
def test_loader_epoch_covers_each_index_once(backend, resident):
    x, y = _numbered(103)
    loader = BatchLoader(x, y, 10, rng=xpnet.Generator(1), backend=backend, resident=resident)
    assert len(loader) == 11
    xs, ys = _epoch(loader)
    assert [len(b) for b in ys] == [10] * 10 + [3]
    order = np.concatenate(ys)
    np.testing.assert_array_equal(np.sort(order), np.arange(103))
    np.testing.assert_array_equal(np.concatenate(xs)[:, 0], order)
    assert not np.array_equal(order, np.arange(103))


@pytest.mark.parametrize("resident", [False, True], ids=["host", "resident"])
def test_loader_drop_last_and_no_shuffle(backend, resident):
    x, y = _numbered(10)
    loader = BatchLoader(x, y, 4, shuffle=False, drop_last=True, backend=backend,
                         resident=resident)
    assert len(loader) == 2
    _, ys = _epoch(loader)
    assert [b.tolist() for b in ys] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert len(BatchLoader(x, y, 11, drop_last=True, backend=backend)) == 0
    assert len(BatchLoader(x, y, 11, backend=backend)) == 1


def test_loader_order_reproducible_from_seed_and_new_each_epoch(backend):
    x, y = _numbered(50)
    a = BatchLoader(x, y, 8, rng=xpnet.Generator(7), backend=backend)
    b = BatchLoader(x, y, 8, rng=xpnet.Generator(7), backend=backend)
    first_a, second_a = np.concatenate(_epoch(a)[1]), np.concatenate(_epoch(a)[1])
    first_b, second_b = np.concatenate(_epoch(b)[1]), np.concatenate(_epoch(b)[1])
    np.testing.assert_array_equal(first_a, first_b)
    np.testing.assert_array_equal(second_a, second_b)
    assert not np.array_equal(first_a, second_a)
    other = np.concatenate(_epoch(BatchLoader(x, y, 8, rng=xpnet.Generator(8)))[1])
    assert not np.array_equal(other, first_a)


def test_resident_batches_equal_host_batches(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 10, 37).astype(np.uint8)  # delivered as int64 either way
    host = BatchLoader(x, y, 8, rng=xpnet.Generator(3), backend=backend, resident=False)
    dev = BatchLoader(x, y, 8, rng=xpnet.Generator(3), backend=backend, resident=True)
    for _ in range(2):
        for (hx, hy), (dx, dy) in zip(host, dev, strict=True):
            assert dx.dtype == backend.xp.float32 and dy.dtype == backend.xp.int64
            assert array_api_compat.device(dx) == backend.device
            np.testing.assert_array_equal(xpnet.to_numpy(hx), xpnet.to_numpy(dx))
            np.testing.assert_array_equal(xpnet.to_numpy(hy), xpnet.to_numpy(dy))


def test_numpy_backend_adds_no_copy(monkeypatch):
    monkeypatch.setattr(backend_module.selection, "_current", None)  # restored after the test
    b = xpnet.set_backend("numpy")
    x, y = _numbered(12)
    xb, yb = next(iter(BatchLoader(x, y, 5, shuffle=False, backend=b)))
    assert np.shares_memory(xb, x) and np.shares_memory(yb, y)  # unshuffled: views
    assert fits_on_device(1, b) is False
    assert BatchLoader(x, y, backend=b).resident is False  # 'auto' on a CPU backend


@pytest.mark.parametrize("kwargs, match", [
    ({"x": np.zeros((5, 2)), "y": np.zeros(4, np.int64)}, "5 inputs and 4 labels"),
    ({"batch_size": 0}, "batch_size: expected a positive integer, got 0"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"batch_size": True}, "batch_size"),
    ({"y": np.zeros(5, np.float32)}, "y: expected integer class labels, got dtype float32"),
    ({"resident": "yes"}, "resident"),
    ({"x": np.float32(1.0)}, "leading example axis"),
])
def test_loader_validation(kwargs, match):
    args = {"x": np.zeros((5, 2), np.float32), "y": np.zeros(5, np.int64)} | kwargs
    with pytest.raises(ValueError, match=match):
        BatchLoader(args.pop("x"), args.pop("y"), **args)


def test_free_device_memory_is_none_on_host_backends(backend):
    """The loader's residency question goes through one backend hook (backend.py names the
    libraries, loader.py does not); host backends have no device memory to fill."""
    from xpnet.backend import free_device_memory

    if backend.name == "cupy":
        assert free_device_memory(backend) > 0
    elif backend.name == "torch" and backend.device.type == "cuda":
        assert free_device_memory(backend) > 0
    else:
        assert free_device_memory(backend) is None
