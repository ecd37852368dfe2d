"""MNIST and Fashion-MNIST: find, download, verify and read the four gzip'd IDX files.

:func:`load_mnist` takes the files from exactly one place:

1. ``data_dir``, or its subfolder named after the data set (``mnist/``, ``fashion-mnist/``);
2. else ``$XPNET_DATA_DIR``, by the same rule;
3. else the cache, ``$XDG_CACHE_HOME/xpnet/<name>`` or ``~/.cache/xpnet/<name>``, where
   ``download=True`` fetches the missing files, one mirror after another.

A folder the user named (argument, flag or variable) that lacks the files is an error naming
that folder and how it was given: a typo never falls through to the cache or a download.

Data files are untrusted input. Every file, local or downloaded, is read as a stream: the IDX
header comes first and is checked (magic number, image size, an example count no larger than
the set holds) before anything more is inflated, and no more than the header declares is ever
decompressed, so memory stays bounded whatever the file holds. Then the gzip CRC, exact length,
label range and a digest (see :class:`Source`) are checked. Anything wrong raises
:class:`DataError` naming the file; nothing is used silently. A download has an overall deadline
and a size cap, is written to a temporary ``.part`` file in the cache folder, flushed, fsync'd
and verified before ``os.replace`` gives it its final name; a ``.part`` file left by a killed
process is swept by the next download.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
DEADLINE = 300.0  # seconds for one file from one mirror, so a trickling mirror gives way
CHUNK = 1 << 16  # bytes per read while downloading and hashing
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
    max_train, max_test : int
        The most examples a training / test file's IDX header may declare. A larger count is
        refused before anything is decompressed: it bounds the memory and disk a file can take.

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
    max_train: int = 60000
    max_test: int = 10000


# Mirrors: torchvision/datasets/mnist.py (pytorch/vision) lists the ossci S3 bucket and
# yann.lecun.com; the CVDF bucket is the one TensorFlow's and JAX's MNIST examples use.
# Digests: SHA-256 of the uncompressed official files (whose .gz MD5s torchvision lists:
# f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d...). The uncompressed digest is used so a
# recompressed but identical copy passes.
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


def load_mnist(data_dir: str | os.PathLike[str] | None = None, *, flatten: bool = False,
               fashion: bool = False, download: bool = True, train_limit: int | None = None,
               progress: bool | None = None, source: Source | None = None,
               data_dir_name: str = "data_dir",
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load MNIST (or Fashion-MNIST) as host NumPy arrays, verified, with pixels in [0, 1].

    Parameters
    ----------
    data_dir : path, optional
        Folder holding the four ``.gz`` files, or a parent holding ``mnist/`` (or
        ``fashion-mnist/``). Without it ``$XPNET_DATA_DIR`` is used the same way, and without
        that the cache. A named folder that lacks the files is an error, never a download.
    flatten : bool
        Return images as (N, 784) instead of (N, 1, 28, 28).
    fashion : bool
        Load Fashion-MNIST instead of MNIST.
    download : bool
        When neither ``data_dir`` nor ``$XPNET_DATA_DIR`` is given and the cache
        (:func:`cache_dir`) lacks files, download them into it. With False, FileNotFoundError.
    train_limit : int, optional
        Keep only the first ``train_limit`` training examples (the test set is whole).
    progress : bool, optional
        Download progress bar: None shows it when stderr is a terminal, True always, False never.
    source : Source, optional
        Mirrors and digests; overrides ``fashion`` (default :data:`MNIST` or
        :data:`FASHION_MNIST`).
    data_dir_name : str
        What the user calls ``data_dir`` in the caller's interface, used in messages: a
        command line passes its flag (``'--data-dir'``).

    Returns
    -------
    x_train : float32, (N, 1, 28, 28) or (N, 784), values in [0, 1]
    y_train : int64, (N,)
    x_test : float32, (10000, 1, 28, 28) or (10000, 784)
    y_test : int64, (10000,)

    Raises
    ------
    DataError
        A file is truncated, corrupt, has the wrong format or digest, declares more examples
        than the set holds, or images and labels disagree in count; the message names the file.
    FileNotFoundError
        The folder given (``data_dir`` or ``$XPNET_DATA_DIR``) does not exist or lacks the
        files; or ``download=False`` and the cache lacks them. The message names the folder
        and how it was given.
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
    given = _given_folder(data_dir, data_dir_name)
    if given is not None:
        folder = _given_files(*given, src)
    else:
        folder = _cached_files(src, download, progress, data_dir_name)
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


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None, **kwargs: Any
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST (Zalando): :func:`load_mnist` with ``fashion=True``; same keywords.

    The files come from ``data_dir`` (or its ``fashion-mnist/``), else ``$XPNET_DATA_DIR``,
    else the cache, and are checked against the official ``.gz`` MD5 digests.
    """
    return load_mnist(data_dir, fashion=True, **kwargs)


def _given_folder(data_dir: str | os.PathLike[str] | None, data_dir_name: str
                  ) -> tuple[str, Path] | None:
    """(how it was given, folder) for the folder the user named, or None for the cache."""
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"load_mnist: {data_dir_name} must be a folder path (str or Path), "
                            f"got {data_dir!r}")
        return data_dir_name, Path(data_dir).expanduser()
    env = os.environ.get("XPNET_DATA_DIR")
    return ("XPNET_DATA_DIR", Path(env).expanduser()) if env else None


def _missing(folder: Path) -> list[str]:
    return [f for f in FILES if not (folder / f).is_file()]


def _given_files(origin: str, base: Path, src: Source) -> Path:
    """The folder holding all four files: ``base`` or ``base/<name>``; else FileNotFoundError
    naming ``base`` and ``origin`` (the argument, flag or variable that named it)."""
    expected = (f"expected a folder holding {', '.join(FILES)} or a {src.name}/ folder with "
                "them; nothing is downloaded instead")
    if not base.exists():
        raise _not_found(f"{origin} does not exist: {base}; {expected}")
    if not base.is_dir():
        raise _not_found(f"{origin} is a file, not a folder: {base}; {expected}",
                         NotADirectoryError)
    for folder in (base, base / src.name):
        if not _missing(folder):
            return folder
    notes = []
    for folder in (base, base / src.name):
        if folder.is_dir():
            missing = _missing(folder)
            notes.append(f"{folder} has " + ("none of them" if len(missing) == len(FILES)
                                             else f"no {', '.join(missing)}"))
    if origin == "XPNET_DATA_DIR":
        instead = "unset XPNET_DATA_DIR"
    elif os.environ.get("XPNET_DATA_DIR"):
        instead = f"omit {origin} to use XPNET_DATA_DIR"
    else:
        instead = f"omit {origin}"
    raise _not_found(
        f"{origin} {base} holds no complete {src.name} set ({'; '.join(notes)}): put "
        f"{', '.join(FILES)} in it or in {base / src.name}, or {instead} to download them "
        f"into {cache_dir() / src.name}")


def _spelled(name: str) -> str:
    """How to pass ``name`` in a hint: ``data_dir=`` for a keyword, a flag as it is."""
    return f"{name}=" if name.isidentifier() else name


def _not_found(message: str, kind: type[OSError] = FileNotFoundError) -> OSError:
    """One argument, so str() is the message alone, without "[Errno 2]" (the path is in it)."""
    return kind(message)


def _cached_files(src: Source, download: bool, progress: bool | None,
                  data_dir_name: str) -> Path:
    """The cache folder, with any missing files downloaded into it if allowed."""
    dest = cache_dir() / src.name
    missing = _missing(dest)
    if not missing:
        return dest
    if not download:
        raise FileNotFoundError(
            f"{src.name} files not found and download=False: the cache {dest} lacks "
            f"{', '.join(missing)}, and neither {data_dir_name} nor XPNET_DATA_DIR names a "
            f"folder. Put {', '.join(FILES)} in one folder and pass it as "
            f"{_spelled(data_dir_name)} (or set XPNET_DATA_DIR), or call with download=True.")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot create the download cache ({exc.strerror}); "
                        f"set XDG_CACHE_HOME or give {data_dir_name}", str(dest)) from exc
    _sweep_parts(dest)
    show = progress if progress is not None else bool(sys.stderr and sys.stderr.isatty())
    for fname in missing:
        _download(fname, dest, src, show, data_dir_name)
    return dest


def _sweep_parts(dest: Path) -> None:
    """Delete ``.part`` files a killed download left in dest. A live download writes within
    every read timeout and ends by its deadline, so an older one belongs to no process."""
    stale = time.time() - (DEADLINE + 2 * TIMEOUT)
    for part in dest.glob(".*.part"):
        try:
            if part.stat().st_mtime < stale:
                part.unlink()
                log.info("xpnet: removed %s, left by an interrupted download", part)
        except OSError:  # gone already, or not ours to remove: the download still works
            pass


def _download(fname: str, dest: Path, src: Source, show: bool,
              data_dir_name: str = "data_dir") -> None:
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
        f"one folder and pass it as {_spelled(data_dir_name)} (or set XPNET_DATA_DIR), or copy "
        f"them into "
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
    """Stream url to a temp file beside dest/fname, verify it, then rename it into place.

    The whole transfer has DEADLINE seconds and at most what the file can legitimately
    compress to (:func:`_max_gz_bytes`); either exceeded is this mirror's failure.
    """
    deadline = time.monotonic() + DEADLINE
    cap = _max_gz_bytes(fname, src)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{fname}.", suffix=".part", dir=dest)
    except OSError as exc:
        raise _local(exc, dest / fname) from exc
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=min(TIMEOUT, DEADLINE)) as resp:
                size = resp.headers.get("Content-Length")
                if size and int(size) > cap:
                    raise OSError(f"the mirror announces {int(size)} bytes, more than the "
                                  f"{cap} a {src.name} {fname} can take")
                # read1 returns what has arrived, so a trickle is seen between reads
                read = getattr(resp, "read1", None) or resp.read
                with tqdm(total=int(size) if size else None, desc=fname, unit="B",
                          unit_scale=True, unit_divisor=1024, disable=not show,
                          leave=False) as bar:
                    got = 0
                    while chunk := read(CHUNK):
                        got += len(chunk)
                        if got > cap:
                            raise OSError(f"the mirror sends more than the {cap} bytes a "
                                          f"{src.name} {fname} can take")
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"deadline of {DEADLINE:g} s passed with "
                                               f"{got} bytes received")
                        try:
                            out.write(chunk)
                        except OSError as exc:
                            raise _local(exc, dest / fname) from exc
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


def _layout(fname: str, src: Source) -> tuple[str, int, int, int]:
    """(kind, number of dimensions, bytes per example, most examples) of one of the files."""
    images = fname in (TRAIN_IMAGES, TEST_IMAGES)
    most = src.max_train if fname in (TRAIN_IMAGES, TRAIN_LABELS) else src.max_test
    return ("images", 3, ROWS * COLS, most) if images else ("labels", 1, 1, most)


def _max_gz_bytes(fname: str, src: Source) -> int:
    """The largest .gz a valid file can be: the IDX bytes plus deflate's worst-case overhead
    for incompressible data (5 bytes per 16 KiB stored block) and the gzip header."""
    _, ndim, item, most = _layout(fname, src)
    raw = 4 + 4 * ndim + item * most
    return raw + 5 * (raw // 16384 + 1) + 1024


def _read_idx(path: Path, fname: str, src: Source, shown: str | None = None) -> np.ndarray:
    """Stream-decompress and check one IDX file (as ``fname`` of ``src``); return its uint8
    payload.

    The header is read and checked first (magic, image size, example count within the set's
    maximum), then exactly the payload it declares is inflated, plus one byte to detect trailing
    data: memory is bounded by the set's size whatever the file holds. Raises DataError naming
    the file (``shown``, default ``path``) for a bad gzip stream or CRC, a wrong header, a length
    that disagrees with the header, labels out of range, or a digest mismatch.
    """
    where = shown or str(path)
    kind, ndim, item, most = _layout(fname, src)
    header = 4 + 4 * ndim
    try:
        with gzip.open(path, "rb") as f:
            # GzipFile.read(n) returns n bytes (fewer only at the end) and inflates no more
            head = f.read(header)
            if len(head) < header:
                raise DataError(f"{where}: {len(head)} bytes uncompressed, shorter than the "
                                f"{header}-byte IDX header of {kind}")
            magic = int.from_bytes(head[:4], "big")
            if magic != _MAGIC[kind]:
                raise DataError(f"{where}: wrong IDX magic number 0x{magic:08x}, expected "
                                f"0x{_MAGIC[kind]:08x} (unsigned-byte {ndim}-D {kind})")
            dims = [int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
            if dims[1:] not in ([], [ROWS, COLS]):
                raise DataError(f"{where}: images are {dims[1]}x{dims[2]}, expected "
                                f"{ROWS}x{COLS}")
            if dims[0] > most:
                raise DataError(f"{where}: the IDX header declares {dims[0]} {kind}, more "
                                f"than the {most} a {src.name} {fname} holds; refused before "
                                "decompressing it")
            size = dims[0] * item
            data = f.read(size)
            if len(data) < size:
                raise DataError(f"{where}: truncated: the header announces {dims[0]} {kind} "
                                f"({header + size} bytes uncompressed) but the file holds "
                                f"{header + len(data)} bytes")
            if f.read(1):
                raise DataError(f"{where}: has trailing bytes: the header announces {dims[0]} "
                                f"{kind} ({header + size} bytes uncompressed) but the file "
                                "holds more")
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"{where}: corrupt or truncated gzip file ({type(exc).__name__}: {exc});"
                        " delete it and fetch it again") from exc
    if fname in src.sha256:
        what, want = "sha256 of the content", src.sha256[fname]
        digest = hashlib.sha256(head)
        digest.update(data)
        got = digest.hexdigest()
    elif fname in src.gz_md5:
        what, want = "md5 of the .gz file", src.gz_md5[fname]
        got = _file_md5(path)
    else:
        what = want = got = ""
    if got != want.lower():
        raise DataError(f"{where}: {what} is {got}, expected {want}: not the official {fname} "
                        f"of {src.name}")
    arr = np.frombuffer(data, dtype=np.uint8).reshape(dims)
    if kind == "labels" and arr.size and int(arr.max()) >= src.n_classes:
        raise DataError(f"{where}: label {int(arr.max())} out of range 0..{src.n_classes - 1}")
    return arr


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
