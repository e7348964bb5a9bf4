"""Joint label distributions the papers plot, computed with DuckDB over labels.parquet.

* Figure 1 (multi-agent paper): per (quality interval, domain) cell, the topic diversity, as
  1 - max topic share (the paper's "85% of these documents belong to the same topic") and as topic
  entropy (nats); bar height = 1 - max share, colour = doc share of the cell (the paper colours by
  influence, which is not known offline).
* Figures 11-13: topic x domain and quality interval x domain distributions (row-normalised heatmaps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thresher.labels.table import PARQUET, LabelTable
from thresher.utils.errors import ThresherError
from thresher.utils.io import atomic_path, atomic_write_text


def _query(table: LabelTable, sql: str) -> list[tuple]:
    import duckdb

    con = duckdb.connect()
    path = str(table.path / PARQUET).replace("'", "''")  # a quote in the path stays a quote
    try:
        con.execute(f"CREATE VIEW labels AS SELECT * FROM read_parquet('{path}')")
        return con.execute(sql).fetchall()
    except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException):
        raise  # our query is wrong: a bug, with its traceback
    except duckdb.Error as e:  # a missing, truncated or corrupt file (not Parquet, a bad page or footer)
        raise ThresherError(f"label table {table.path}: {PARQUET} is unreadable ({type(e).__name__}: {e})"
                            .splitlines()[0]) from None


def joint_counts(table: LabelTable, a: str, b: str) -> tuple[list[str], list[str], np.ndarray]:
    """(names of a, names of b, (A, B) int64 counts) over rows where both are labelled."""
    rows = _query(table, f'SELECT "{a}"::VARCHAR, "{b}"::VARCHAR, count(*) FROM labels '
                         f'WHERE "{a}" IS NOT NULL AND "{b}" IS NOT NULL GROUP BY 1, 2')
    an, bn = table.categories(a), table.categories(b)
    m = np.zeros((len(an), len(bn)), dtype=np.int64)
    for x, y, c in rows:
        m[an.index(x), bn.index(y)] = c
    return an, bn, m


def diversity_cells(table: LabelTable, interval: str, domain: str, topic: str) -> list[dict]:
    """One dict per non-empty (interval, domain) cell: n, 1 - max topic share, topic entropy, top topic."""
    rows = _query(table, f'SELECT "{interval}"::VARCHAR, "{domain}"::VARCHAR, "{topic}"::VARCHAR, count(*) FROM labels '
                         f'WHERE "{interval}" IS NOT NULL AND "{domain}" IS NOT NULL AND "{topic}" IS NOT NULL GROUP BY 1, 2, 3')
    cells: dict[tuple, dict[str, int]] = {}
    for q, d, t, c in rows:
        cells.setdefault((q, d), {})[t] = c
    out = []
    for (q, d), topics in sorted(cells.items()):
        p = np.array(list(topics.values()), dtype=np.float64)
        n = p.sum()
        p /= n
        out.append({"interval": q, "domain": d, "n": int(n), "one_minus_max_share": float(1 - p.max()),
                    "entropy": float(-(p * np.log(p)).sum()) + 0.0,  # + 0.0: no "-0.000" for one topic
                   "top_topic": max(topics, key=topics.get)})
    return out


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_figure1(cells: list[dict], intervals: list[str], domains: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(9, 7))
    ax = fig.add_subplot(projection="3d")
    total = max(sum(c["n"] for c in cells), 1)
    cmap = plt.get_cmap("viridis")
    for c in cells:
        x, y = intervals.index(c["interval"]), domains.index(c["domain"])
        ax.bar3d(x, y, 0, 0.6, 0.6, c["one_minus_max_share"], color=cmap(min(1.0, 5 * c["n"] / total)), shade=True)
    ax.set_xticks(np.arange(len(intervals)) + 0.3, intervals)
    ax.set_yticks(np.arange(len(domains)) + 0.3, domains, fontsize=7)
    ax.set_zlabel("topic diversity (1 - max share)")
    ax.set_xlabel("quality interval")
    ax.set_title("quality x domain x topic diversity (colour: share of docs)")
    _save(fig, path)
    plt.close(fig)


def plot_heatmap(rows: list[str], cols: list[str], counts: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)  # row-normalised
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(cols), 1 + 0.45 * len(rows)))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    for i, j in zip(*np.nonzero(counts)):
        ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.03)
    ax.set_title(title)
    _save(fig, path)
    plt.close(fig)


def label_stats(table_dir: str | Path, out_dir: str | Path, interval: str = "quality_interval",
                domain: str = "domain", topic: str = "topic") -> dict[str, Path]:
    """Write figure1.png, <a>_by_<b>.png heatmaps and stats.md under ``out_dir``; return their paths."""
    table, out = LabelTable.open(table_dir), Path(out_dir)
    cats = [c for c in table.columns if table.kind(c) == "category"]
    md = [f"# Label statistics: {table.path}", "", f"{table.n_docs} documents.", "", "| column | labelled | missing |", "|---|---:|---:|"]
    for c in cats:
        miss = int((np.asarray(table.codes(c)) < 0).sum())
        md.append(f"| {c} | {table.n_docs - miss} | {miss} |")
    paths: dict[str, Path] = {}
    if all(c in cats for c in (interval, domain, topic)):
        cells = diversity_cells(table, interval, domain, topic)
        paths["figure1"] = out / "figure1.png"
        plot_figure1(cells, table.categories(interval), table.categories(domain), paths["figure1"])
        md += ["", "## Figure 1: topic diversity per (quality interval, domain)", "",
               "| interval | domain | docs | 1 - max topic share | topic entropy (nats) | top topic |", "|---|---|---:|---:|---:|---|"]
        md += [f"| {c['interval']} | {c['domain']} | {c['n']} | {c['one_minus_max_share']:.3f} | {c['entropy']:.3f} | {c['top_topic']} |" for c in cells]
    else:
        lacking = [c for c in (interval, domain, topic) if c not in cats]
        md += ["", f"No Figure 1: it needs the category columns {interval}, {domain} and {topic}; this table lacks "
               f"{', '.join(lacking)} (e.g. `thresher label <store> --out <this table> --labelers topic_zeroshot` adds topic)."]
    for a, b in ((topic, domain), (interval, domain)):
        if a in cats and b in cats:
            an, bn, m = joint_counts(table, b, a)
            paths[f"{a}_by_{b}"] = out / f"{a}_by_{b}.png"
            plot_heatmap(an, bn, m, f"{a} distribution per {b}", paths[f"{a}_by_{b}"])
            md += ["", f"## {a} per {b} (counts)", "", "| " + b + " | " + " | ".join(bn) + " |", "|---" * (len(bn) + 1) + "|"]
            md += [f"| {r} | " + " | ".join(map(str, row)) + " |" for r, row in zip(an, m)]
    paths["markdown"] = out / "stats.md"
    atomic_write_text(paths["markdown"], "\n".join(md) + "\n")
    return paths
