"""Download a file with checksum verification, and unpack a tar archive safely.

Downloads stream into a temporary file next to the destination and are renamed into place
only after the checksum matches, so an interrupted or corrupted download never leaves a
file that looks complete.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from urllib.request import urlopen  # module-level so tests can monkeypatch it

from ..io import atomic_open

_CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A downloaded file's checksum differs from the published one (the file was deleted)."""


def file_digest(path: str, algorithm: str = "md5") -> str:
    """Hex digest of the file at ``path``."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, dest: str, checksum: str, algorithm: str = "md5",
                  timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest`` if its ``algorithm`` digest equals ``checksum``.

    Writes to a temporary file in the destination folder and renames it on success. On a
    checksum mismatch the temporary file is deleted and `ChecksumError` is raised; network
    errors (``urllib.error.URLError``, ``OSError``) propagate after the same clean-up.
    Returns ``dest``.
    """
    digest = hashlib.new(algorithm)
    # The checksum is checked inside the block: raising there deletes the temporary file.
    with atomic_open(dest, "wb") as out, urlopen(url, timeout=timeout) as response:
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            digest.update(chunk)
            out.write(chunk)
        got = digest.hexdigest()
        if got != checksum.lower():
            raise ChecksumError(
                f"download of {url} has {algorithm} {got}, expected {checksum}; the file was "
                "deleted. Retry, or download it yourself and pass its folder as --data-dir"
            )
    return dest


def safe_extract(archive: str, dest: str) -> None:
    """Unpack the regular files and folders of tar ``archive`` into ``dest``.

    Links, devices and any member whose path is absolute or climbs out of ``dest`` are
    refused (ValueError), so a crafted archive cannot write outside the folder.
    """
    root = os.path.realpath(dest)
    with tarfile.open(archive, "r:*") as tar:
        for member in tar.getmembers():
            target = os.path.realpath(os.path.join(root, member.name))
            if os.path.isabs(member.name) or os.path.commonpath([root, target]) != root:
                raise ValueError(f"{archive}: member {member.name!r} points outside the folder")
            if member.isdir():
                os.makedirs(target, exist_ok=True)
            elif member.isfile():
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
            else:
                raise ValueError(
                    f"{archive}: member {member.name!r} is a link or special file; only "
                    "regular files and folders are accepted"
                )
