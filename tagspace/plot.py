"""PNG plots of comparison reports (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_compare(report: dict[str, Any], path: Path) -> None:
    """Grouped bars: P@1 and R@10 of every method, one group per method, one bar per dim."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    dims = sorted({r["dim"] for r in rows if r["dim"]})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(dims), 1)
    for ax, key, title in ((axes[0], "p_at_1", "P@1"), (axes[1], "r_at_10", "R@10")):
        for j, dim in enumerate(dims):
            values = []
            for m in methods:
                match = [r for r in rows if r["method"] == m and r["dim"] in (dim, None)]
                values.append(match[0]["metrics"][key] if match else 0.0)
            xs = [i + (j - (len(dims) - 1) / 2) * width for i in range(len(methods))]
            ax.bar(xs, values, width, label=f"d={dim}")
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"hashtag prediction: {report['n_train_posts']} train posts, "
                 f"{report['n_test_posts']} test posts, {report['n_tags']} tags")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_prequential(runs: list[tuple[str, Any]], path: Path) -> None:
    """Windowed prequential P@1 and R@10 against tagged posts seen, one line per run
    (``runs``: (label, ``PrequentialReport``))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in ((axes[0], "p_at_1", "P@1"), (axes[1], "r_at_10", "R@10")):
        for label, report in runs:
            ax.plot([p.posts for p in report.curve], [getattr(p, key) for p in report.curve],
                    label=label)
        ax.set_xlabel("tagged posts seen")
        ax.set_title(f"prequential {title} (each post scored before training on it)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
