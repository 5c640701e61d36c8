"""Data-parallel training with torchrun on CPU: 2 processes x 1 thread vs 1 process.

One `prunekit run` of the same spec (LeNet-5 on a 20k-image Fashion-MNIST subset: dense
training, one-shot global magnitude pruning to 90%, fine-tuning) in three set-ups:

- ``1 proc x 1 thread``:  ``PRUNEKIT_THREADS=1 prunekit run spec.yaml``
- ``1 proc x 2 threads``: ``PRUNEKIT_THREADS=2 prunekit run spec.yaml``
- ``2 procs x 1 thread``: ``PRUNEKIT_THREADS=2 torchrun --standalone --nproc_per_node 2
  --no-python prunekit run spec.yaml`` (each rank gets 2 // 2 = 1 thread)

Each set-up runs in a fresh project folder, ``--repeats`` times, interleaved so machine noise
hits them alike. Reported: median seconds per epoch (training + test evaluation, from the runs'
own histories), wall time of the whole command (process start-up included), and the final
accuracies. The recipe is the same in all three (2 processes split each batch of 128 in two
and average the gradients), so accuracies should agree up to float rounding.

    python benchmarks/bench_ddp.py [--repeats 2 --subset 20000 --epochs 3 --finetune-epochs 1]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import command_line, machine, median, write_section

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

SPEC = """\
name: bench_ddp
data: {{name: fashion_mnist, train_subset: {subset}, batch_size: 128}}
model: {{name: lenet5}}
train: {{epochs: {epochs}, optimizer: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4, schedule: cosine}}
method:
  name: oneshot
  params: {{sparsity: 0.9, score: magnitude, allocation: global, finetune_epochs: {ft}, finetune_lr: 0.01}}
seeds: [0]
"""

SETUPS = {
    "1 proc x 1 thread": (1, 1),
    "1 proc x 2 threads": (1, 2),
    "2 procs x 1 thread": (2, 2),  # (processes, PRUNEKIT_THREADS = cores shared by the ranks)
}


def command(procs: int, spec: Path, folder: Path):
    prunekit = [str(BIN / "prunekit"), "run", str(spec), "--dir", str(folder), "--quiet"]
    if procs == 1:
        return prunekit
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
            "--no-python"] + prunekit


def run_once(name: str, spec: Path, scratch: Path, rep: int) -> dict:
    procs, threads = SETUPS[name]
    folder = scratch / f"{name.replace(' ', '_')}_{rep}"
    shutil.rmtree(folder, ignore_errors=True)
    env = dict(os.environ, PRUNEKIT_THREADS=str(threads), OMP_NUM_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "PRUNEKIT_DEVICE"):
        env.pop(key, None)
    load_before = os.getloadavg()[0]
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(command(procs, spec, folder), env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    now = resource.getrusage(resource.RUSAGE_CHILDREN)  # every waited-for descendant: all ranks
    cpu = (now.ru_utime - used.ru_utime) + (now.ru_stime - used.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    records = {}
    for run in (folder / "runs").iterdir():
        records[run.name.split("-")[0]] = json.loads((run / "metrics.json").read_text())
    dense, pruned = records["dense"], records["oneshot"]
    mask = torch.load(next((folder / "runs").glob("oneshot-*")) / "model.pt", weights_only=True)["mask"]
    return {
        "setup": name, "repeat": rep, "processes": procs, "threads_per_process": threads // procs,
        "wall_s": wall, "cpu_s": cpu, "load_before": load_before, "load_after": os.getloadavg()[0],
        "dense_epoch_s": [row["seconds"] for row in dense["history"]],
        "finetune_epoch_s": [row["seconds"] for row in pruned["history"] if row.get("phase") == "finetune"],
        "dense_top1": dense["metrics"]["top1"], "oneshot_top1": pruned["extra"].get("oneshot_top1"),
        "final_top1": pruned["metrics"]["top1"], "achieved_sparsity": pruned["metrics"]["achieved_sparsity"],
        "mask": {k: v for k, v in mask.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--subset", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--report-only", action="store_true", help="re-render results/ddp.md from results/ddp.json")
    args = ap.parse_args()
    if args.report_only:
        return report_only()

    scratch = Path(tempfile.mkdtemp(prefix="bench_ddp_"))
    spec = scratch / "spec.yaml"
    spec.write_text(SPEC.format(subset=args.subset, epochs=args.epochs, ft=args.finetune_epochs))
    results = []
    try:
        for rep in range(args.repeats):
            order = list(SETUPS) if rep % 2 == 0 else list(reversed(SETUPS))
            for name in order:
                r = run_once(name, spec, scratch, rep)
                print(f"{name} #{rep}: wall {r['wall_s']:.1f} s, dense epochs {r['dense_epoch_s']}, "
                      f"final top-1 {r['final_top1']:.2f} (load {r['load_before']:.1f})", flush=True)
                results.append(r)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    base_mask = next(r["mask"] for r in results if r["setup"] == "1 proc x 1 thread")
    # Weights the 1x1 run keeps and this run prunes (kept counts are equal, so this is also
    # the number this run keeps and 1x1 prunes).
    for r in results:
        mask = r.pop("mask")
        r["mask_diff_vs_1x1"] = sum(int((base_mask[k] & ~mask[k]).sum()) for k in base_mask)
    data = {"args": vars(args), "machine": machine(), "command": command_line(),
            "kept": sum(int(m.sum()) for m in base_mask.values()), "runs": results}
    data["summary"], md = render(data)
    write_section("ddp", md, data)


def render(data: dict):
    """The summary numbers and the Markdown section, from the measured runs alone."""
    args, results, kept = data["args"], data["runs"], data["kept"]
    rows, summary = [], {}
    base = [r for r in results if r["setup"] == "1 proc x 1 thread"]
    ref = median([s for r in base for s in r["dense_epoch_s"]])
    for name in SETUPS:
        mine = [r for r in results if r["setup"] == name]
        epoch = median([s for r in mine for s in r["dense_epoch_s"]])
        ft = median([s for r in mine for s in r["finetune_epoch_s"]])
        s = summary[name] = {
            "epoch_s": epoch, "finetune_epoch_s": ft, "wall_s": median([r["wall_s"] for r in mine]),
            "cpu_s": median([r["cpu_s"] for r in mine]), "speed_vs_1x1": ref / epoch,
            "dense_top1": [r["dense_top1"] for r in mine], "final_top1": [r["final_top1"] for r in mine],
            "oneshot_top1": [r["oneshot_top1"] for r in mine],
            "mask_diff_vs_1x1": [r["mask_diff_vs_1x1"] for r in mine],
            "repeats_agree": len({(r["final_top1"], r["mask_diff_vs_1x1"]) for r in mine}) == 1}
        rows.append(f"| {name} | {epoch:.2f} | {ref / epoch:.2f}x | {ft:.2f} | {s['wall_s']:.1f} | {s['cpu_s']:.1f} | "
                    f"{', '.join(f'{v:.2f}' for v in s['dense_top1'])} | "
                    f"{', '.join(f'{v:.2f}' for v in s['final_top1'])} | "
                    f"{', '.join(str(v) for v in s['mask_diff_vs_1x1'])} of {kept:,} |")
    one, thr, two = (summary[k] for k in SETUPS)
    finals = [v for s in summary.values() for v in s["final_top1"]]
    base_epochs = [x for r in base for x in r["dense_epoch_s"]]
    loads = [r["load_before"] for r in results] + [r["load_after"] for r in results]
    steps = args["epochs"] * -(-args["subset"] // 128)
    md = f"""## Multi-process data parallelism (torchrun, gloo, CPU)

`prunekit run` of LeNet-5 on {args['subset']:,} Fashion-MNIST training images (batch 128, SGD lr
0.05 cosine, {args['epochs']} dense epochs), global magnitude pruning to 90%, {args['finetune_epochs']}
fine-tuning epoch(s) at lr 0.01; the full 10k test set is evaluated after every epoch (in
shards under torchrun). Each set-up ran {args['repeats']} times in a fresh folder, interleaved.
"Epoch" is the median seconds of a dense epoch (training + evaluation) from the runs' own
histories; "wall" is the whole command (process start-up, data loading, all three phases);
"CPU" is the CPU seconds of the command summed over its processes (user + system), the work
done whatever share of the cores the job got.

| set-up | epoch (s) | vs 1x1 | fine-tune epoch (s) | wall (s) | CPU (s) | dense top-1 (%) | final top-1 (%) | kept weights that differ from 1x1 |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

- Speed: 2 processes x 1 thread ran an epoch at {two['speed_vs_1x1']:.2f}x the speed of 1 process x 1
  thread and {thr['epoch_s'] / two['epoch_s']:.2f}x that of 1 process x 2 threads (the same 2 cores), and used
  {two['cpu_s'] / one['cpu_s']:.2f}x the CPU seconds of 1x1: two interpreters import torch and load the data,
  every rank builds each full batch before taking its half, and each step of 64 images per
  rank ends with a gradient all-reduce (LeNet-5's steps are short, so that fixed cost weighs).
- Accuracy: the three set-ups train the same recipe (2 ranks split each batch of 128 into
  two of 64 and average the gradients: same {steps} dense steps, same lr schedule); LeNet-5 has
  no BatchNorm, so they differ only in float rounding (sums in another order; 2 threads also
  sum differently from 1). Over the steps that rounding grows into different weights, so
  the 90% masks differ in a part of the kept weights (table) and the final accuracies span
  {min(finals):.2f}-{max(finals):.2f}%: 2 processes differ from 1x1 by the same order as 2 threads do. Every set-up
  repeated itself exactly: {'yes' if all(s['repeats_agree'] for s in summary.values()) else 'no'}. The test
  (tests/test_distributed.py) checks that the ranks agree bit for bit and that pruning one
  model gives the same mask in 1 and 2 processes.
- Machine: {data['machine']}; load average {min(loads):.1f}-{max(loads):.1f} during the runs
  (the benchmark's own processes included). {machine_note(loads, base_epochs)}
- Command: `{data['command']}` (`--report-only` re-renders this section from
  results/ddp.json).
"""
    return summary, md


def machine_note(loads, base_epochs) -> str:
    """Whether the figures are clean: a load above the 2 cores this benchmark itself uses means other jobs ran."""
    spread = f"1x1 dense epochs took {min(base_epochs):.1f}-{max(base_epochs):.1f} s"
    if max(loads) <= 2.5:
        return f"The machine was otherwise idle ({spread})."
    return (f"Other CPU-bound jobs shared the 2 cores, so the times are noisy ({spread}) and biased: under "
            "contention the scheduler gives a 2-process job a larger share of the cores than a 1-process one, "
            "which flatters '2 procs x 1 thread', and 2 threads of one process wait for each other whenever "
            "another job holds a core, which makes '1 proc x 2 threads' look worse than on an idle machine. "
            "Rerun on an idle machine for clean ratios.")


def report_only() -> None:
    from _common import RESULTS

    data = json.loads((RESULTS / "ddp.json").read_text())
    data["summary"], md = render(data)
    write_section("ddp", md, data)


if __name__ == "__main__":
    main()
