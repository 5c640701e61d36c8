"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every writer goes the same way: the bytes go to a temporary file in the *same folder* (so the
final rename never crosses file systems), are flushed and ``fsync``-ed, and the temporary
file then replaces the target with ``os.replace`` (atomic on POSIX and Windows). If anything
fails before the rename, the temporary file is removed and an existing target is untouched.

The temporary file is created with ``os.open(..., 0o666)``, so the kernel applies the
process umask exactly as for a plain ``open(path, "w")``: files are 0644 under the default
umask. (``tempfile.mkstemp`` would make them 0600, which is how model.pt and checkpoints
used to differ from every other output.)

Helpers, from the most to the least convenient:

* ``atomic_write_text`` / ``atomic_write_bytes`` / ``atomic_write_json`` / ``atomic_torch_save``:
  the content is produced first (a value json cannot serialise fails before any file exists);
* ``atomic_open(path, mode)``: a context manager yielding a file object, for writers that
  stream (downloads, ``torch.save`` into a file object);
* ``atomic_path(path, suffix=...)``: a context manager yielding a temporary *path*, for
  writers that insist on a file name (``torch.export.save`` wants ``.pt2``, matplotlib infers
  the image format from the suffix).

I/O failures are translated here, once: a full disk, a read-only file system, a missing
permission (``ENOSPC``, ``EDQUOT``, ``EROFS``, ``EACCES``, ``EPERM``) raise ``StorageError``,
whose message is one line naming the cause and the target path ("no space left on device:
runs/x/model.pt"); ``check_writable(folder)`` makes the same check before any work starts,
and ``storage_error`` translates an ``OSError`` caught elsewhere (the results store).

This is a bottom-layer module: it imports only the standard library and torch.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["atomic_path", "atomic_open", "atomic_write_bytes", "atomic_write_text",
           "atomic_write_json", "atomic_torch_save", "TEMP_MARK", "StorageError", "storage_error",
           "check_writable", "MIN_FREE_BYTES"]

# What ``check_writable`` asks to be free by default: room for a small model and its
# checkpoints; a fuller disk fails before the work, not after it.
MIN_FREE_BYTES = 16 * 2**20

# The errno values that mean "this location cannot be written", with how they are said.
CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large",
}


class StorageError(OSError):
    """A file or folder cannot be written (full disk, read-only, no permission).

    ``str(err)`` is one line, "<cause>: <path>"; ``errno`` is the original error number."""

    def __init__(self, cause: str, path: PathLike, code: Optional[int] = None):
        super().__init__(code, cause)
        self.cause = cause
        self.path = str(path)

    def __str__(self) -> str:
        return f"{self.cause}: {self.path}"

    def __reduce__(self):  # crosses process boundaries (sweep workers) intact
        return (type(self), (self.cause, self.path, self.errno))


def storage_error(err: BaseException, path: PathLike) -> Optional[StorageError]:
    """The ``StorageError`` an error stands for (None when it is another error). The error's
    chain is searched too: torch.save reports a failed write as a RuntimeError ("unexpected
    pos ...") raised while the OSError that caused it is being handled."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, StorageError):
            return err
        code = getattr(err, "errno", None)
        if isinstance(err, OSError) and code in CAUSES:
            return StorageError(CAUSES[code], path, code)
        err = err.__cause__ or err.__context__
        seen += 1
    return None


@contextlib.contextmanager
def translate(path: PathLike) -> Iterator[None]:
    """Turn a full-disk / read-only / permission ``OSError`` inside the block (or an error it
    caused) into a one-line ``StorageError`` naming ``path``."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        translated = storage_error(err, path)
        if translated is None or translated is err:
            raise
        raise translated from err


def check_writable(folder: PathLike, min_free: int = MIN_FREE_BYTES) -> Path:
    """Make sure files can be written in ``folder`` before any work starts, without creating
    anything: in ``folder``, or in its nearest existing ancestor when it does not exist yet,
    a probe file is created and removed, and at least ``min_free`` bytes must be free there.
    Raises ``StorageError`` ("read-only file system: runs", "no space left on device (3.2 MB
    free, 16.0 MB needed): runs"); returns ``folder`` as a ``Path``."""
    folder = Path(folder)
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise StorageError("not a folder", existing, errno.ENOTDIR)
    with translate(folder):
        probe = _create_temp(existing / ".write-probe", "")
        os.unlink(probe)
        free = shutil.disk_usage(existing).free
    if free < min_free:
        raise StorageError(f"no space left on device ({free / 2**20:.1f} MB free, "
                           f"{min_free / 2**20:.1f} MB needed)", folder, errno.ENOSPC)
    return folder


# Every temporary file name contains this, so leftovers (after a power cut) are recognisable.
TEMP_MARK = ".tmp"


def _temp_name(path: Path, suffix: str) -> Path:
    # Hidden, unique (several writers may race for the same target) and ending in ``suffix``.
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_MARK}{suffix}")


def _create_temp(path: Path, suffix: str) -> Path:
    """Create an empty temporary file next to ``path`` with the umask's usual mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_name(path, suffix)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # a one-in-four-billion name clash: draw another name
            continue
        os.close(fd)
        return tmp


def _fsync_file(tmp: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, hence best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit it replaces ``path``.

    Write the content to the yielded path by name (it exists, empty). ``suffix`` is appended
    to the temporary name, for writers that look at it (``suffix=".pt2"`` for
    ``torch.export.save``, ``".png"`` for ``savefig``). On an exception the temporary file is
    removed, ``path`` is left as it was, and the exception propagates (a full disk, a
    read-only file system or a missing permission as a one-line ``StorageError`` naming
    ``path``). Parent folders are created."""
    path = Path(path)
    with translate(path):
        tmp = _create_temp(path, suffix)
    try:
        with translate(path):
            yield tmp
            _fsync_file(tmp)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: Optional[str] = None,
                newline: Optional[str] = None) -> Iterator[IO[Any]]:
    """``open(path, mode)`` for writing, made atomic: yields a file object on a temporary
    file, which replaces ``path`` when the ``with`` block ends without an exception.

    ``mode`` is ``"w"`` (text, UTF-8 unless ``encoding`` says otherwise) or ``"wb"``."""
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()  # atomic_path fsyncs the file before the rename


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path`` as a ``Path``."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path`` as a ``Path``."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: PathLike, obj: Any, **json_kwargs: Any) -> Path:
    """``json.dumps(obj, **json_kwargs)`` plus a final newline, written atomically.

    The text is made before any file is touched, so a value json cannot serialise raises
    ``TypeError`` / ``ValueError`` and leaves an existing ``path`` as it was."""
    return atomic_write_text(path, json.dumps(obj, **json_kwargs) + "\n")


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj, path)``, atomically (same argument order as ``torch.save``).

    It streams into the temporary file (no second copy in memory); a value torch cannot
    pickle removes the temporary file and leaves an existing ``path`` as it was."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)
