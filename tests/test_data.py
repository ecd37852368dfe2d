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
from pathlib import Path

import array_api_compat
import numpy as np
import pytest

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

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
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


def test_not_found_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("XPNET_DATA_DIR", str(tmp_path / "env"))
    (tmp_path / "given").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path / "given", download=False)
    msg = str(info.value)
    for place in (tmp_path / "given", tmp_path / "given" / "mnist", tmp_path / "env",
                  tmp_path / "env" / "mnist", tmp_path / "cache" / "xpnet" / "mnist"):
        assert f"{place} (" in msg
    assert "download=True" in msg


# --------------------------------------------------------------------------- downloads

class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; paths under /short/ send half the file under the full Content-Length."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        if not self.path.startswith("/short/"):
            return super().do_GET()
        body = (Path(self.directory) / self.path[len("/short/"):]).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2])
        self.close_connection = True


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
