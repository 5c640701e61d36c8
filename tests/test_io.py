"""prunekit.io: atomic writes leave the old file or the new one, never a temp file."""
import json
import os
import stat

import pytest
import torch

from prunekit.io import (TEMP_MARK, atomic_open, atomic_path, atomic_torch_save, atomic_write_bytes,
                         atomic_write_json, atomic_write_text)


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if TEMP_MARK in p.name]


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_each_helper_writes_its_content(tmp_path):
    assert atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert atomic_write_text(tmp_path / "a.txt", "héllo").read_text(encoding="utf-8") == "héllo"
    atomic_write_json(tmp_path / "a.json", {"x": [1, 2]}, indent=1)
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "a.pt")
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["w"], torch.arange(3))
    with atomic_open(tmp_path / "s.txt") as f:
        f.write("streamed")
    assert (tmp_path / "s.txt").read_text() == "streamed"
    with atomic_path(tmp_path / "p.bin", suffix=".pt2") as tmp:
        assert tmp.name.endswith(".pt2") and tmp.parent == tmp_path
        tmp.write_bytes(b"by name")
    assert (tmp_path / "p.bin").read_bytes() == b"by name"
    atomic_write_text(tmp_path / "new" / "deep" / "f.txt", "parents made")
    assert (tmp_path / "new" / "deep" / "f.txt").exists()
    assert _leftovers(tmp_path) == []


def test_replaces_an_existing_file(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and _leftovers(tmp_path) == []


def test_unserialisable_json_leaves_existing_file_untouched(tmp_path):
    target = tmp_path / "r.json"
    target.write_text('{"old": 1}')
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert target.read_text() == '{"old": 1}' and _leftovers(tmp_path) == []


def test_exception_mid_write_removes_temp_and_keeps_old(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "wb") as f:
            f.write(b"half of the new")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []
    with pytest.raises(RuntimeError):
        with atomic_path(target):
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_unpicklable_torch_save_keeps_old(tmp_path):
    target = tmp_path / "m.pt"
    atomic_torch_save({"ok": 1}, target)
    with pytest.raises(Exception):
        atomic_torch_save({"bad": lambda: 0}, target)
    assert torch.load(target, weights_only=True) == {"ok": 1} and _leftovers(tmp_path) == []


def test_modes_follow_umask_like_a_plain_open(tmp_path):
    old = os.umask(0o022)
    try:
        (tmp_path / "plain.txt").write_text("x")
        atomic_write_text(tmp_path / "t.txt", "x")
        atomic_torch_save({"a": 1}, tmp_path / "m.pt")
        with atomic_path(tmp_path / "p.png", suffix=".png") as tmp:
            tmp.write_bytes(b"x")
        os.umask(0o027)
        atomic_write_text(tmp_path / "strict.txt", "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "plain.txt") == 0o644
    assert {_mode(tmp_path / n) for n in ("t.txt", "m.pt", "p.png")} == {0o644}
    assert _mode(tmp_path / "strict.txt") == 0o640


def test_atomic_open_refuses_append(tmp_path):
    with pytest.raises(ValueError):
        with atomic_open(tmp_path / "f", "a"):
            pass
