"""Where to look for a dataset's files, in order, and where to download them.

Order: the explicit ``data_dir``, then ``$PRUNEKIT_DATA``, then the known system folders
(Debian's ``dataset-fashion-mnist`` package installs into /usr/share/datasets/fashion-mnist),
then the download cache. Each root is tried as-is and through subfolders named like the
dataset, so one ``--data-dir`` can hold several datasets.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence

ENV_VAR = "PRUNEKIT_DATA"

#: dataset name -> system folders searched after data_dir and $PRUNEKIT_DATA.
#: Module-level so tests (and unusual installs) can change it.
SYSTEM_DIRS: Dict[str, List[str]] = {
    "fashion_mnist": ["/usr/share/datasets/fashion-mnist", "/usr/share/datasets/fashion_mnist"],
    "mnist": ["/usr/share/datasets/mnist"],
    "cifar10": ["/usr/share/datasets/cifar10", "/usr/share/datasets/cifar-10"],
    "cifar100": ["/usr/share/datasets/cifar100", "/usr/share/datasets/cifar-100"],
}


@dataclass
class Candidate:
    """A folder that was (or will be) searched, and why it is on the list."""

    path: str
    origin: str  # "data_dir", "$PRUNEKIT_DATA", "system folder" or "download cache"


def cache_dir(name: str) -> str:
    """Default download folder for dataset ``name``: ``~/.cache/prunekit/<name>``.

    ``$XDG_CACHE_HOME`` replaces ``~/.cache`` when set.
    """
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "prunekit", name)


def download_dir(name: str, data_dir: Optional[str]) -> str:
    """Where a download of ``name`` goes: a subfolder of ``data_dir``, else the cache.

    A subfolder (not ``data_dir`` itself) because MNIST and Fashion-MNIST share file names.
    """
    return os.path.join(data_dir, name) if data_dir else cache_dir(name)


@contextlib.contextmanager
def created_only_on_success(target: str) -> Iterator[None]:
    """Folders the block creates on the way to ``target`` are removed again (when empty) if
    it fails: a failed download (offline, a mistyped ``data_dir``) leaves no empty folders."""
    missing, path = [], os.path.abspath(target)
    while not os.path.exists(path) and path != os.path.dirname(path):
        missing.append(path)  # deepest first
        path = os.path.dirname(path)
    try:
        yield
    except BaseException:
        for folder in missing:
            try:
                os.rmdir(folder)
            except OSError:  # not empty (a partial download is kept) or already gone
                break
        raise


def candidates(name: str, data_dir: Optional[str], subfolders: Sequence[str]) -> List[Candidate]:
    """All folders to search for dataset ``name``, best first, without duplicates."""
    roots = []
    if data_dir:
        roots.append((os.path.expanduser(str(data_dir)), "data_dir"))
    env = os.environ.get(ENV_VAR)
    if env:
        roots.append((os.path.expanduser(env), f"${ENV_VAR}"))
    found: List[Candidate] = []
    for root, origin in roots:
        found.append(Candidate(root, origin))
        found.extend(Candidate(os.path.join(root, sub), origin) for sub in subfolders)
    found.extend(Candidate(path, "system folder") for path in SYSTEM_DIRS.get(name, []))
    # Where a download would go, then the cache (a download made without --data-dir).
    found.append(Candidate(download_dir(name, data_dir), "download folder"))
    found.append(Candidate(cache_dir(name), "download cache"))
    unique, seen = [], set()
    for cand in found:
        key = os.path.abspath(cand.path)
        if key not in seen:
            seen.add(key)
            unique.append(cand)
    return unique


def find(
    name: str,
    data_dir: Optional[str],
    subfolders: Sequence[str],
    has_data: Callable[[str], bool],
) -> tuple[Optional[str], List[Candidate]]:
    """The first candidate folder for which ``has_data(folder)`` is true (or None).

    Also returns every candidate, for the error message when nothing is found.
    """
    cands = candidates(name, data_dir, subfolders)
    for cand in cands:
        if os.path.isdir(cand.path) and has_data(cand.path):
            return cand.path, cands
    return None, cands


def describe(cands: Sequence[Candidate]) -> str:
    """One line per searched folder, saying whether it exists (for error messages)."""
    lines = []
    for cand in cands:
        state = "incomplete or wrong layout" if os.path.isdir(cand.path) else "does not exist"
        lines.append(f"  - {cand.path} ({cand.origin}): {state}")
    if not any(c.origin == f"${ENV_VAR}" for c in cands):
        lines.append(f"  - ${ENV_VAR} is not set")
    return "\n".join(lines)
