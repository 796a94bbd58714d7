"""Writers for analysis records: CSV, a markdown table and a PNG chart (matplotlib, Agg backend)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["markdown_table", "plot_sensitivity", "plot_similarity", "write_csv"]


def _rows(records: Sequence[Any]) -> list[dict[str, Any]]:
    return [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in records]


def write_csv(records: Sequence[Any], path: str | Path) -> Path:
    """One row per record, columns in field order."""
    rows = _rows(records)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["name"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return f"{value:.4g}"
    return str(value)


def markdown_table(records: Sequence[Any], columns: Sequence[str]) -> str:
    """A markdown table of ``columns`` (record fields), one row per record."""
    rows = _rows(records)
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _bar_chart(labels: list[str], values: list[float], ylabel: str, title: str, path: Path, marked: set[int]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(labels) + 2), 4))
    colors = ["tab:red" if i in marked else "tab:blue" for i in range(len(values))]
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(labels)), labels, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_similarity(records: Sequence[Any], path: str | Path, title: str = "SQNR per layer (forward order)") -> Path:
    """SQNR (dB) per layer in forward order; exact agreement is drawn at the top of the chart, the worst in red."""
    finite = [r.sqnr_db for r in records if math.isfinite(r.sqnr_db)]
    top = max(finite, default=60.0) + 5
    values = [r.sqnr_db if math.isfinite(r.sqnr_db) else top for r in records]
    worst = {min(range(len(values)), key=values.__getitem__)} if values else set()
    return _bar_chart([r.name for r in records], values, "SQNR (dB)", title, Path(path), worst)


def plot_sensitivity(records: Sequence[Any], path: str | Path, top: int = 30) -> Path:
    """Sensitivity score of the ``top`` most sensitive layers, most sensitive first."""
    shown = list(records)[:top]
    view = shown[0].view if shown else "only"
    return _bar_chart(
        [r.name for r in shown],
        [r.score for r in shown],
        "score",
        f"sensitivity ({view}): {shown[0].measured if shown else ''}"[:110],
        Path(path),
        {0} if shown else set(),
    )
