"""Multi-process data parallelism (torchrun, gloo on CPU): ranks agree bit for bit, one process
writes, and two processes train what one process trains.

One torchrun job of 2 processes and one plain process run tests/_distributed_worker.py (about
15 s together); the tests compare what they saved. Skipped only where torch has no gloo.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

gloo = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                          reason="torch.distributed with the gloo backend is not available")
pytestmark = gloo

WORKER = Path(__file__).with_name("_distributed_worker.py")


def _env():
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PRUNEKIT_DEVICE",
                "PRUNEKIT_PRECISION", "PRUNEKIT_CHANNELS_LAST", "PRUNEKIT_COMPILE"):
        env.pop(key, None)
    return env


def _run(cmd, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd + [str(WORKER), str(out)], env=_env(), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    from test_files import make_folder

    make_folder(base / "images", per_class=12)  # 24 JPEGs a split, read by FileLoader
    two, one = base / "two", base / "one"
    # --standalone: a free port of its own, so parallel jobs on the machine cannot collide.
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], two)
    _run([sys.executable], one)
    load = lambda p: torch.load(p, weights_only=False)  # our own test output
    return {"two": two, "one": one, "r0": load(two / "rank0.pt"), "r1": load(two / "rank1.pt"),
            "single": load(one / "rank0.pt")}


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return set(a) == set(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def test_two_ranks_really_ran(runs):
    assert (runs["r0"]["world"], runs["r0"]["rank"]) == (2, 0)
    assert (runs["r1"]["world"], runs["r1"]["rank"]) == (2, 1)
    assert runs["single"]["world"] == 1


@pytest.mark.parametrize("key", ["dense", "oneshot_mask", "finetuned", "gmp_mask", "gmp_model", "ste_mask",
                                 "ste_model", "resumed", "straight", "fit_hist", "ft_hist", "gmp_hist",
                                 "resumed_hist", "cli_exit", "ltp_hist", "ltp_state", "ltp_mask",
                                 "ltp_model", "odd_batch", "files_hist", "files_model"])
def test_ranks_bit_identical(runs, key):
    # Different initial weights per rank (seed 100 + rank): fit must start from rank 0's.
    assert _equal(runs["r0"][key], runs["r1"][key]), key


def test_gmp_really_pruned_and_bn_buffers_moved(runs):
    r0 = runs["r0"]
    kept = sum(int(m.sum()) for m in r0["gmp_mask"].values())
    total = sum(m.numel() for m in r0["gmp_mask"].values())
    assert abs(1 - kept / total - 0.8) < 1e-3
    assert not torch.equal(r0["gmp_model"]["1.running_mean"], torch.zeros(4))  # BN stats were updated


def test_resume_after_crash_matches_uninterrupted(runs):
    for r in ("r0", "r1"):
        assert _equal(runs[r]["resumed"], runs[r]["straight"])


def test_one_process_and_two_agree(runs):
    r0, single = runs["r0"], runs["single"]
    # Same mask at one-shot time (and for ste_fixed's thresholds after training).
    assert _equal(r0["oneshot_mask"], single["oneshot_mask"])
    assert _equal(r0["ste_mask"], single["ste_mask"])
    # Without BatchNorm, splitting each batch over 2 ranks and averaging the gradients is the
    # one-process update up to float rounding (a sum instead of a mean would be far off).
    for key in ("dense", "finetuned", "ste_model"):
        for name, value in r0[key].items():
            assert torch.allclose(value, single[key][name], atol=1e-5, rtol=0), (key, name)
    for a, b in zip(r0["fit_hist"] + r0["ft_hist"], single["fit_hist"] + single["ft_hist"]):
        assert a["step"] == b["step"] and a["train_top1"] == b["train_top1"] and a["test_top1"] == b["test_top1"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4)


def _files(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_only_rank0_writes(runs):
    two, one = runs["two"], runs["one"]
    # The same set of files as the one-process run (no per-rank copies, no temp files left).
    assert _files(two / "proj") == _files(one / "proj")
    assert _files(two / "fit") == ["last.pt"] and _files(two / "crash") == ["last.pt"]
    assert not [f for f in _files(two) if f.endswith(".tmp")]
    for rank in ("r0", "r1"):
        assert runs[rank]["cli_exit"] == 0
    with sqlite3.connect(two / "proj" / "results.sqlite") as db, \
            sqlite3.connect(one / "proj" / "results.sqlite") as ref:
        rows = db.execute("SELECT id, status, attempts FROM runs ORDER BY id").fetchall()
        assert len(rows) == 3 and all(status == "done" and attempts == 1 for _, status, attempts in rows)
        assert [r[0] for r in rows] == [r[0] for r in ref.execute("SELECT id FROM runs ORDER BY id")]
        for table in ("metrics", "layers", "history", "trail"):
            n = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            assert n == ref.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] and n > 0, table
    # The pruned run's mask in model.pt is the one the single process computed.
    from prunekit.artifacts import load_model

    oneshot = [p for p in (two / "proj" / "runs").iterdir() if p.name.startswith("oneshot-")]
    assert len(oneshot) == 1
    _, d2 = load_model(oneshot[0] / "model.pt")
    _, d1 = load_model(one / "proj" / "runs" / oneshot[0].name / "model.pt")
    assert _equal(dict(d2["mask"]), dict(d1["mask"]))


def test_training_goes_through_distributed_data_parallel(runs):
    """Every fit of the two-process run (library and `prunekit run`) wraps the user's module in DDP;
    one process never does."""
    assert len(runs["r0"]["wraps"]) >= 7 and "Sequential" in runs["r0"]["wraps"]
    assert runs["r0"]["wraps"] == runs["r1"]["wraps"]
    assert runs["single"]["wraps"] == []


def test_world_size_not_dividing_the_batch_is_one_clear_error(runs):
    assert "batch size 63 cannot be split over 2 processes" in runs["r0"]["odd_batch"]
    assert runs["single"]["odd_batch"] == "trained"
    # `prunekit run` under torchrun: exit 2 and one line on every rank, before any run starts.
    for r in ("r0", "r1"):
        err = runs[r]["cli_odd_err"].strip()
        assert runs[r]["cli_odd_exit"] == 2 and err.count("\n") == 0, err
        assert "data.batch_size 63 cannot be split over 2 processes" in err
        assert not runs[r]["cli_odd_runs"]
    assert runs["single"]["cli_odd_exit"] == 0  # one process trains it


def test_ltp_thresholds_and_fp16_scaler_agree_across_ranks(runs):
    # Equal on both ranks (parametrized test above); and they moved from the start.
    r0 = runs["r0"]
    assert r0["ltp_hist"][-1]["skipped_steps"] >= 0 and r0["ltp_state"]["steps"] == 8


def test_file_loader_shards_under_ddp_and_matches_one_process(runs):
    """Each rank decodes half of every global batch (DistributedSampler); the 2-process training
    is the 1-process one up to float rounding (no BatchNorm), with the same augmentation."""
    r0, single = runs["r0"], runs["single"]
    assert r0["files_sharded"] and not single["files_sharded"]
    for name, value in r0["files_model"].items():
        assert torch.allclose(value, single["files_model"][name], atol=1e-5, rtol=0), name
    for a, b in zip(r0["files_hist"], single["files_hist"]):
        assert a["step"] == b["step"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_top1"] == b["test_top1"]
