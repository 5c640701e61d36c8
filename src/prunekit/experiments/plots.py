"""The report's figures, drawn from aggregated results (plain dicts), saved as PNG.

matplotlib is imported only here and only when a figure is drawn, with the Agg backend (no
display needed). Every function takes the groups built by :mod:`.report` (one per label and
requested sparsity, with ``mean``/``std`` dicts over seeds) and returns the written path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..io import atomic_path

BASELINE_MARKERS = ("s", "^", "D", "v", "P", "X")


def family_colours(groups: Sequence[Dict]) -> Dict[str, str]:
    """One colour per method family (a method and its baselines), the same in every figure;
    the dense reference is black."""
    plt = _pyplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    families = list(dict.fromkeys(g.get("family", g["label"]) for g in groups if g["kind"] != "dense"))
    out = {f: colours[i % len(colours)] for i, f in enumerate(families)}
    out.update({g["label"]: "black" for g in groups if g["kind"] == "dense"})
    return out


def _styles(groups: Sequence[Dict]) -> Dict[str, Dict]:
    """Line style per label: methods solid with filled dots, baselines dashed with hollow
    markers (one marker per baseline kind), in their family's colour."""
    colour_of = family_colours(groups)
    baselines = list(dict.fromkeys(g["label"].split(" (")[0] for g in groups if g["kind"] == "baseline"))
    styles = {}
    for g in groups:
        if g["kind"] == "dense":
            continue
        colour = colour_of[g.get("family", g["label"])]
        if g["kind"] == "baseline":
            marker = BASELINE_MARKERS[baselines.index(g["label"].split(" (")[0]) % len(BASELINE_MARKERS)]
            styles[g["label"]] = {"color": colour, "linestyle": "--", "marker": marker, "markerfacecolor": "none"}
        else:
            styles[g["label"]] = {"color": colour, "linestyle": "-", "marker": "o"}
    return styles


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _y(group: Dict, y: str):
    top1, std = group["mean"].get("top1"), group["std"].get("top1") or 0.0
    if top1 is None:
        return None, 0.0
    return (100.0 - top1 if y == "error" else top1), std


def _ylabel(y: str) -> str:
    return "test top-1 error (%)" if y == "error" else "test top-1 accuracy (%)"


def tradeoff(groups: Sequence[Dict], path: Path, title: str, y: str = "accuracy") -> Path:
    """Accuracy (or error) vs sparsity, vs nonzero parameters and vs effective FLOPs: one line
    per method (baselines dashed), the dense model as a horizontal reference, error bars =
    std over seeds."""
    plt = _pyplot()
    axes_spec = [("achieved_sparsity", "sparsity of the prunable weights (%)", 100.0, False),
                 ("nonzero_params", "nonzero parameters", 1.0, True),
                 ("effective_flops", "effective FLOPs (batch 1)", 1.0, True)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=True)
    dense = [g for g in groups if g["kind"] == "dense"]
    styles = _styles(groups)
    curves: Dict[str, List[Dict]] = {}
    for g in groups:
        if g["kind"] != "dense":
            curves.setdefault(g["label"], []).append(g)
    for ax, (key, xlabel, scale, log) in zip(axes, axes_spec):
        for label, members in curves.items():
            pts = sorted((g["mean"][key] * scale, *_y(g, y), (g["std"].get(key) or 0.0) * scale)
                         for g in members if g["mean"].get(key) is not None and _y(g, y)[0] is not None)
            if not pts:
                continue
            xs, ys, es, xe = zip(*pts)
            ax.errorbar(xs, ys, yerr=es, xerr=xe if key != "achieved_sparsity" else None, label=label,
                        capsize=3, linewidth=1.4, markersize=5, **styles[label])
        for g in dense:
            value, std = _y(g, y)
            if value is None:
                continue
            ax.axhline(value, color="black", linestyle=":", linewidth=1.2,
                       label=f"{g['label']} ({value:.2f}%)")
            if std:
                ax.axhspan(value - std, value + std, color="black", alpha=0.08)
            if key != "achieved_sparsity" and g["mean"].get(key):
                ax.plot([g["mean"][key]], [value], marker="*", color="black", markersize=10)
        ax.set_xlabel(xlabel)
        if log:
            ax.set_xscale("log")
        if y == "error":
            ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(_ylabel(y))
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False,
                   bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1 + 0.04 * (len(labels) // 4), 1, 1))
    return _save(plt, fig, path)


def layer_sparsity(layers: Dict[str, List[Dict]], path: Path, title: str,
                   colours: Optional[Dict[str, str]] = None) -> Path:
    """Per-layer sparsity bars (as in seed 002, Figure 5): ``layers`` maps a method label to
    rows {name, params, sparsity (mean over seeds)} in network order."""
    plt = _pyplot()
    labels = list(layers)
    names = [row["name"] for row in next(iter(layers.values()))] if layers else []
    width = 0.8 / max(1, len(labels))
    # Wide enough for the bars of small networks, capped for deep ones (ResNets: 50+ layers).
    fig, ax = plt.subplots(figsize=(min(24.0, max(6.0, 0.6 * len(names) * max(1, len(labels)) ** 0.5 + 2)), 4.4))
    for i, label in enumerate(labels):
        by_name = {row["name"]: row["sparsity"] for row in layers[label]}
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [100.0 * by_name.get(n, float("nan")) for n in names], width=width, label=label,
               color=(colours or {}).get(label))
    params = {row["name"]: row["params"] for row in next(iter(layers.values()))} if layers else {}
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{n}\n({params.get(n, 0):,})" for n in names], rotation=30 if len(names) < 16 else 90,
                       ha="right", fontsize=8 if len(names) < 30 else 6)
    ax.set_ylabel("sparsity of the layer (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(title)
    fig.tight_layout()
    return _save(plt, fig, path)


def training_curves(curves: Dict[str, List[Dict]], path: Path, title: str,
                    colours: Optional[Dict[str, str]] = None) -> Optional[Path]:
    """Test top-1 and training loss per epoch: ``curves`` maps a label to rows {x (epoch
    index over the run's phases), test_top1, train_loss} averaged over seeds."""
    if not any(curves.values()):
        return None
    plt = _pyplot()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    for label, rows in curves.items():
        if not rows:
            continue
        line = acc_ax.plot([r["x"] for r in rows], [r["test_top1"] for r in rows], marker=".", label=label,
                           color=(colours or {}).get(label))[0]
        losses = [r for r in rows if r["train_loss"] is not None]
        loss_ax.plot([r["x"] for r in losses], [r["train_loss"] for r in losses], marker=".",
                     color=line.get_color(), label=label)
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epochs of training (counting the dense training a method starts from)")
    acc_ax.set_ylabel("test top-1 accuracy (%)")
    loss_ax.set_ylabel("training loss")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(plt, fig, path)


def sensitivity(curves: Dict[str, List[Dict]], path: Path, title: str) -> Path:
    """Li et al.'s sensitivity plot (Fig. 2(b)): test top-1 vs fraction of a layer's filters
    pruned, one line per layer (``prunekit.structured.sensitivity``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    cmap = plt.get_cmap("viridis")
    n = max(1, len(curves) - 1)
    for i, (layer, rows) in enumerate(curves.items()):
        ax.plot([100.0 * r["fraction"] for r in rows], [r["top1"] for r in rows], marker=".", label=layer,
                color=cmap(i / n))
    ax.set_xlabel("filters pruned away in the layer (%)")
    ax.set_ylabel("test top-1 accuracy, no retraining (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
              ncol=1 if len(curves) <= 20 else 2)
    ax.set_title(title)
    fig.tight_layout()
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:  # savefig picks the format from the suffix
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
