"""MNIST and Fashion-MNIST: find, download, verify and read the four gzip'd IDX files.

:func:`load_mnist` looks for the files in this order and uses the first folder holding all four:

1. ``data_dir``, or its subfolder named after the data set (``mnist/``, ``fashion-mnist/``);
2. ``$XPNET_DATA_DIR``, by the same rule;
3. the cache, ``$XDG_CACHE_HOME/xpnet/<name>`` or ``~/.cache/xpnet/<name>``;
4. with ``download=True``, the missing files are downloaded into the cache, one mirror after
   another.

Every file is checked before use, local or downloaded: gzip stream and CRC, IDX magic number,
dimensions, exact length, label range and a digest (see :class:`Source`). Anything wrong raises
:class:`DataError` naming the file; nothing is used silently. A download is written to a temporary
file in the cache folder, flushed, fsync'd and verified before ``os.replace`` gives it its final
name, so an interrupted or bad download never leaves a file under that name.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import http.client
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..validate import positive_int

__all__ = [
    "FASHION_MNIST", "FILES", "MNIST", "DataError", "DownloadError", "Source", "cache_dir",
    "load_fashion_mnist", "load_mnist",
]

log = logging.getLogger("xpnet")

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
ROWS = COLS = 28
TIMEOUT = 30.0  # seconds per connection attempt and per read, so a dead mirror fails fast
_MAGIC = {"images": 0x00000803, "labels": 0x00000801}  # unsigned bytes, 3-D / 1-D


class DataError(ValueError):
    """A data file is present but unusable: truncated, corrupt, or not the expected content."""


class DownloadError(OSError):
    """No mirror delivered a verified copy of a file."""


@dataclass(frozen=True)
class Source:
    """Where a data set is downloaded from and how its files are recognised.

    Parameters
    ----------
    name : str
        Short name, also the subfolder looked for under a data folder and the cache
        (``'mnist'``, ``'fashion-mnist'``).
    mirrors : tuple of str
        Base URLs tried in order; a file's URL is ``mirror + file name`` (http, https, file).
    sha256 : mapping of file name to hex digest
        SHA-256 of each file's *uncompressed* content: it identifies the data whatever gzip
        produced the ``.gz`` bytes, so it verifies local copies and downloads alike.
    gz_md5 : mapping of file name to hex digest
        MD5 of the ``.gz`` bytes, checked only for files without a ``sha256`` entry.
        A file with neither gets the structural checks only.
    n_classes : int
        Labels must lie in ``0 .. n_classes - 1``.

    Examples
    --------
    >>> import dataclasses
    >>> local = dataclasses.replace(MNIST, mirrors=("file:///srv/mirror/mnist/",))
    """

    name: str
    mirrors: tuple[str, ...]
    sha256: Mapping[str, str] = field(default_factory=dict)
    gz_md5: Mapping[str, str] = field(default_factory=dict)
    n_classes: int = 10


# Mirrors: torchvision/datasets/mnist.py (pytorch/vision) lists the ossci S3 bucket and
# yann.lecun.com; the CVDF bucket is the one TensorFlow's and JAX's MNIST examples use.
# Digests: uncompressed SHA-256 from /work/shared/data/mnist/README.md (the same content as the
# official files, whose .gz MD5s torchvision lists: f68b3c2d..., d53e105e..., 9fb629c4...,
# ec29112d...). The uncompressed digest is used so a recompressed but identical copy passes.
MNIST = Source(
    name="mnist",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    sha256={
        TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
)

# Mirrors and digests: torchvision/datasets/mnist.py (class FashionMNIST) gives the S3 website
# and the MD5 of each official .gz file, the same table as zalandoresearch/fashion-mnist's
# README; the GitHub copy is the repository's data/fashion folder holding those same files.
# No uncompressed digest is published, so Fashion-MNIST files are checked by .gz MD5.
FASHION_MNIST = Source(
    name="fashion-mnist",
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    gz_md5={
        TRAIN_IMAGES: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        TRAIN_LABELS: "25c81989df183df01b3e8a0aad5dffbe",
        TEST_IMAGES: "bef4ecab320f06d8554ea6380940ec79",
        TEST_LABELS: "bb300cfdad3c16e7a12a480ee83cd310",
    },
)


def cache_dir() -> Path:
    """xpnet's download cache: ``$XDG_CACHE_HOME/xpnet``, else ``~/.cache/xpnet``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "xpnet"


def load_mnist(data_dir: str | os.PathLike | None = None, *, flatten: bool = False,
               fashion: bool = False, download: bool = True, train_limit: int | None = None,
               progress: bool | None = None, source: Source | None = None,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load MNIST (or Fashion-MNIST) as host NumPy arrays, verified, with pixels in [0, 1].

    Parameters
    ----------
    data_dir : path, optional
        Folder holding the four ``.gz`` files, or a parent holding ``mnist/`` (or
        ``fashion-mnist/``). Searched first, then ``$XPNET_DATA_DIR``, then the cache.
    flatten : bool
        Return images as (N, 784) instead of (N, 1, 28, 28).
    fashion : bool
        Load Fashion-MNIST instead of MNIST.
    download : bool
        When no folder holds the files, download them into the cache (:func:`cache_dir`).
        With False, a missing set raises FileNotFoundError listing every place searched.
    train_limit : int, optional
        Keep only the first ``train_limit`` training examples (the test set is whole).
    progress : bool, optional
        Download progress bar: None shows it when stderr is a terminal, True always, False never.
    source : Source, optional
        Mirrors and digests; overrides ``fashion`` (default :data:`MNIST` or
        :data:`FASHION_MNIST`).

    Returns
    -------
    x_train : float32, (N, 1, 28, 28) or (N, 784), values in [0, 1]
    y_train : int64, (N,)
    x_test : float32, (10000, 1, 28, 28) or (10000, 784)
    y_test : int64, (10000,)

    Raises
    ------
    DataError
        A file is truncated, corrupt, has the wrong format or digest, or images and labels
        disagree in count; the message names the file.
    FileNotFoundError
        ``download=False`` and no searched folder holds all four files.
    DownloadError
        Every mirror failed for some file; the message lists each mirror's failure.

    Examples
    --------
    >>> x_train, y_train, x_test, y_test = load_mnist("/data", flatten=True)  # doctest: +SKIP
    >>> x_train.shape, y_train.dtype  # doctest: +SKIP
    ((60000, 784), dtype('int64'))
    """
    src = source if source is not None else (FASHION_MNIST if fashion else MNIST)
    if train_limit is not None:
        train_limit = positive_int("load_mnist", "train_limit", train_limit)
    _check_data_dir(data_dir, src)
    folder = _locate(data_dir, src, download, progress)
    out: list[np.ndarray] = []
    for images_name, labels_name, limit in ((TRAIN_IMAGES, TRAIN_LABELS, train_limit),
                                            (TEST_IMAGES, TEST_LABELS, None)):
        labels = _read_idx(folder / labels_name, labels_name, src)
        images = _read_idx(folder / images_name, images_name, src)
        if len(images) != len(labels):
            raise DataError(f"{folder / images_name} holds {len(images)} images but "
                            f"{folder / labels_name} holds {len(labels)} labels; the two files "
                            "do not belong together")
        if limit is not None:
            if limit > len(labels):
                raise ValueError(f"train_limit: asked for {limit} training examples, but "
                                 f"{folder / images_name} holds only {len(labels)}")
            images, labels = images[:limit], labels[:limit]
        x = images.astype(np.float32)  # the one float copy; scaled in place below
        x /= 255.0
        out += [x.reshape(len(x), ROWS * COLS) if flatten else x.reshape(len(x), 1, ROWS, COLS),
                labels.astype(np.int64)]
    x_train, y_train, x_test, y_test = out
    return x_train, y_train, x_test, y_test


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, **kwargs
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST (Zalando): :func:`load_mnist` with ``fashion=True``; same keywords.

    The files are looked for in ``data_dir``/``fashion-mnist/``, ``$XPNET_DATA_DIR`` and the
    cache, and checked against the official ``.gz`` MD5 digests.
    """
    return load_mnist(data_dir, fashion=True, **kwargs)


def _check_data_dir(data_dir: str | os.PathLike | None, src: Source) -> None:
    """A ``data_dir`` the caller named must be a folder: a typo must not fall through to
    another folder or to a download."""
    if data_dir is None:
        return
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"load_mnist: data_dir must be a folder path (str or Path), "
                        f"got {data_dir!r}")
    path = Path(data_dir).expanduser()
    expected = (f"expected a folder holding {', '.join(FILES)} or a {src.name}/ folder with "
                "them")
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, f"data_dir does not exist; {expected}",
                                str(path))
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"data_dir is a file, not a folder; {expected}",
                                 str(path))


def _search_dirs(data_dir: str | os.PathLike | None, src: Source) -> list[tuple[str, Path]]:
    """(origin, folder) pairs to look in, in order."""
    dirs = []
    for origin, base in (("data_dir", data_dir),
                         ("XPNET_DATA_DIR", os.environ.get("XPNET_DATA_DIR") or None)):
        if base is not None:
            base = Path(base).expanduser()
            dirs += [(origin, base), (origin, base / src.name)]
    dirs.append(("cache", cache_dir() / src.name))
    return dirs


def _missing(folder: Path) -> list[str]:
    return [f for f in FILES if not (folder / f).is_file()]


def _locate(data_dir: str | os.PathLike | None, src: Source, download: bool,
            progress: bool | None) -> Path:
    """The first folder holding all four files, downloading into the cache if allowed."""
    dirs = _search_dirs(data_dir, src)
    for _, folder in dirs:
        if not _missing(folder):
            return folder
    notes = []
    for origin, folder in dirs:
        if not folder.is_dir():
            why = "no such folder"
        else:
            missing = _missing(folder)
            why = "empty of them" if len(missing) == len(FILES) else \
                f"missing {', '.join(missing)}"
            if origin != "cache" and len(missing) < len(FILES):
                log.warning("xpnet: %s holds only some %s files (%s)", folder, src.name, why)
        notes.append(f"  {folder} ({origin}): {why}")
    if not download:
        raise FileNotFoundError(
            f"{src.name} files not found and download=False. Searched:\n" + "\n".join(notes)
            + f"\nPut {', '.join(FILES)} in one folder and pass it as data_dir= (or set "
            "XPNET_DATA_DIR), or call with download=True.")
    dest = cache_dir() / src.name
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot create the download cache ({exc.strerror}); "
                        "set XDG_CACHE_HOME or pass data_dir=", str(dest)) from exc
    show = progress if progress is not None else bool(sys.stderr and sys.stderr.isatty())
    for fname in _missing(dest):
        _download(fname, dest, src, show)
    return dest


def _download(fname: str, dest: Path, src: Source, show: bool) -> None:
    """Fetch one file into dest, trying each mirror in turn; DownloadError if all fail."""
    failures = []
    for mirror in src.mirrors:
        url = mirror.rstrip("/") + "/" + fname
        log.info("xpnet: downloading %s", url)
        try:
            _fetch(url, fname, dest, src, show)
            return
        except _LocalWriteError as exc:  # disk full, no permission: no mirror can help
            raise exc.error from exc.error.__cause__
        except (OSError, ValueError, http.client.HTTPException) as exc:
            failures.append(f"  {url}: {_reason(exc)}")
    tried = "\n".join(failures) if failures else "  (no mirrors configured)"
    raise DownloadError(
        f"could not download {fname} for {src.name}; every mirror failed:\n{tried}\n"
        f"To install the files by hand, download {', '.join(FILES)} from any mirror above into "
        f"one folder and pass it as data_dir= (or set XPNET_DATA_DIR), or copy them into "
        f"{dest}.")


def _reason(exc: BaseException) -> str:
    """A short why for one mirror's failure."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"{exc.reason}"
    return f"{type(exc).__name__}: {exc}"


class _LocalWriteError(Exception):
    """Carries an OSError from writing the download on this machine (not the mirror's)."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


def _local(exc: OSError, path: Path) -> _LocalWriteError:
    """A write error on this machine, as the same OSError kind naming ``path``."""
    named = type(exc)(exc.errno, f"cannot write the downloaded file ({exc.strerror})",
                      str(path)) if exc.errno is not None else exc
    named.__cause__ = exc
    return _LocalWriteError(named)


def _fetch(url: str, fname: str, dest: Path, src: Source, show: bool) -> None:
    """Stream url to a temp file beside dest/fname, verify it, then rename it into place."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{fname}.", suffix=".part", dir=dest)
    except OSError as exc:
        raise _local(exc, dest / fname) from exc
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
                size = resp.headers.get("Content-Length")
                with tqdm(total=int(size) if size else None, desc=fname, unit="B",
                          unit_scale=True, unit_divisor=1024, disable=not show,
                          leave=False) as bar:
                    got = 0
                    while chunk := resp.read(1 << 16):
                        try:
                            out.write(chunk)
                        except OSError as exc:
                            raise _local(exc, dest / fname) from exc
                        got += len(chunk)
                        bar.update(len(chunk))
            if size and got != int(size):  # http.client returns a short body without raising
                raise OSError(f"incomplete download: got {got} of {size} bytes")
            try:
                out.flush()
                os.fsync(out.fileno())
            except OSError as exc:
                raise _local(exc, dest / fname) from exc
        _read_idx(Path(tmp), fname, src, shown=f"{url} (downloaded)")
        try:
            os.replace(tmp, dest / fname)
        except OSError as exc:
            raise _local(exc, dest / fname) from exc
    except BaseException:  # interrupted or bad: never leave the partial file behind
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_idx(path: Path, fname: str, src: Source, shown: str | None = None) -> np.ndarray:
    """Decompress and check one IDX file (as ``fname`` of ``src``); return its uint8 payload.

    Raises DataError naming the file (``shown``, default ``path``) for a bad gzip stream or CRC,
    a wrong magic number or image size, a length that disagrees with the header, labels out of
    range, or a digest mismatch.
    """
    where = shown or str(path)
    raw = path.read_bytes()
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"{where}: corrupt or truncated gzip file ({type(exc).__name__}: {exc});"
                        " delete it and fetch it again") from exc
    kind = "images" if fname in (TRAIN_IMAGES, TEST_IMAGES) else "labels"
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where}: {len(data)} bytes uncompressed, shorter than the {header}-byte "
                        f"IDX header of {kind}")
    magic = int.from_bytes(data[:4], "big")
    if magic != _MAGIC[kind]:
        raise DataError(f"{where}: wrong IDX magic number 0x{magic:08x}, expected "
                        f"0x{_MAGIC[kind]:08x} (unsigned-byte {ndim}-D {kind})")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if dims[1:] not in ([], [ROWS, COLS]):
        raise DataError(f"{where}: images are {dims[1]}x{dims[2]}, expected {ROWS}x{COLS}")
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(f"{where}: {what}: the header announces {dims[0]} {kind} "
                        f"({expected} bytes uncompressed) but the file holds {len(data)} bytes")
    if fname in src.sha256:
        what, want = "sha256 of the content", src.sha256[fname]
        got = hashlib.sha256(data).hexdigest()
    elif fname in src.gz_md5:
        what, want = "md5 of the .gz file", src.gz_md5[fname]
        got = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    else:
        what = want = got = ""
    if got != want.lower():
        raise DataError(f"{where}: {what} is {got}, expected {want}: not the official {fname} "
                        f"of {src.name}")
    arr = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    if kind == "labels" and arr.size and int(arr.max()) >= src.n_classes:
        raise DataError(f"{where}: label {int(arr.max())} out of range 0..{src.n_classes - 1}")
    return arr
