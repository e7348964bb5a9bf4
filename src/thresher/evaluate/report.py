"""Reports: reference-loss curves per policy and agent weights over training, as Markdown + PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from thresher.utils.errors import ThresherError
from thresher.utils.io import atomic_path, atomic_write_text, make_dir

REF_PREFIX = "ref_loss/"
HELDOUT_PREFIX = "heldout_loss/"  # held-out pool loss per label value (evaluate/heldout.py)
SUMMARY = "summary.json"  # a finished run's summary (experiments.run.write_summary): report, experiment, regmix read it


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
    return rows


def ref_curves(metrics: list[dict], prefix: str = REF_PREFIX) -> dict[str, tuple[list[int], list[float]]]:
    """task -> (steps, losses) from the trainer's metrics rows carrying ``ref_loss/<task>`` keys (``prefix``
    HELDOUT_PREFIX: label value -> the held-out pool loss)."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for row in metrics:
        for k, v in row.items():
            if k.startswith(prefix) and v is not None:
                steps, vals = curves.setdefault(k[len(prefix):], ([], []))
                steps.append(int(row["step"]))
                vals.append(float(v))
    return curves


def final_ref_losses(metrics: list[dict], prefix: str = REF_PREFIX) -> dict[str, float]:
    return {task: vals[-1] for task, (_, vals) in ref_curves(metrics, prefix).items() if vals}


def final_table(finals: dict[str, dict[str, float]]) -> list[str]:
    """Markdown rows: policy, one column per key, and the mean over keys (only for a policy that has every key:
    a mean over fewer would not compare)."""
    keys = sorted({t for f in finals.values() for t in f})
    lines = ["| policy | " + " | ".join(keys) + " | mean |", "|---|" + "---:|" * (len(keys) + 1)]
    for p, f in finals.items():
        vals = [f.get(t) for t in keys]
        mean = "-" if None in vals else f"{sum(vals) / len(vals):.4f}"
        lines.append(f"| {p} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in vals) + f" | {mean} |")
    return lines


def _savefig(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_ref_losses(runs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for m in runs.values() for t in ref_curves(m)})
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5 * max(1, len(tasks)), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for policy, metrics in runs.items():
            curve = ref_curves(metrics).get(task)
            if curve:
                ax.plot(curve[0], curve[1], marker="o", ms=3, label=policy)
        ax.set_title(f"reference loss: {task}")
        ax.set_xlabel("step")
        ax.set_ylabel("NLL / continuation token")
        ax.legend()
    _savefig(fig, path)
    plt.close(fig)


def _named(values: list, names: list | None) -> dict[str, float]:
    names = names or [str(i) for i in range(len(values))]
    return {str(n): float(v) for n, v in zip(names, values) if v is not None}


def weight_trajectories(log: list[dict]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """agent -> category -> (steps, weights) from the selector log's ``agents`` update rows."""
    out: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for row in log:
        for up in row.get("agents") or []:
            if not up.get("weights") or len(up["weights"]) > 64:  # a bandit (over thousands of clusters): not a line plot
                continue
            for cat, w in _named(up["weights"], up.get("categories")).items():
                steps, ws = out.setdefault(up["agent"], {}).setdefault(cat, ([], []))
                steps.append(int(row["step"]))
                ws.append(w)
    return out


def theta_trajectory(log: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """agent -> (steps, theta) from rows carrying ``theta`` (agents named by the update rows)."""
    names = next(([u["agent"] for u in r["agents"]] for r in log if r.get("agents")), None)
    out: dict[str, tuple[list[int], list[float]]] = {}
    for row in log:
        if isinstance(row.get("theta"), list):
            for agent, t in _named(row["theta"], names).items():
                steps, ts = out.setdefault(agent, ([], []))
                steps.append(int(row["step"]))
                ts.append(t)
    return out


def plot_agent_weights(log: list[dict], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traj = weight_trajectories(log)
    theta = theta_trajectory(log)
    panels = list(traj.items()) + ([("console theta", theta)] if theta else [])
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (agent, cats) in zip(axes[0], panels):
        for cat, (steps, ws) in cats.items():
            ax.plot(steps, ws, marker=".", label=cat)
        ax.set_title(agent if agent == "console theta" else f"{agent} agent weights")
        ax.set_xlabel("step")
        ax.legend(fontsize=6, ncol=2)
    _savefig(fig, path)
    plt.close(fig)
    return True


def passes_table(metrics: dict[str, list[dict]]) -> list[str]:
    """Per run, how often training went through one selection again (metrics.jsonl's selection_pass): the most
    passes over one D_k and the share of logged steps that drew from a D_k already trained through."""
    rows = []
    for p, m in metrics.items():
        passes = [int(r["selection_pass"]) for r in m if r.get("selection_pass") is not None]
        if passes:
            rows.append(f"| {p} | {max(passes)} | {sum(x > 1 for x in passes) / len(passes):.0%} |")
    if not rows:
        return []
    return ["## Passes over the selection", "",
            "| policy | most passes over one D_k | steps on a repeated D_k |", "|---|---:|---:|", *rows, "",
            "A stage that trains more tokens than its D_k holds repeats documents (docs/train.md, selection_pass).", ""]


def compute_table(runs: dict[str, Path], metrics: dict[str, list[dict]] | None = None) -> list[str]:
    """Selection cost against training cost per policy, from each run's summary.json; a run without one (still
    training, or killed) from the totals of its last metrics.jsonl line (``metrics``), marked with its step."""
    rows, running = [], False
    for p, d in runs.items():
        path = Path(d) / SUMMARY
        if path.exists():
            try:
                s = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ThresherError(f"{path} is unreadable ({type(e).__name__}): rerun that policy or delete its "
                                    "folder") from None
            ts, ss = s.get("train_seconds") or 0.0, s.get("selection_seconds") or 0.0
            tf, sf = s.get("train_flops") or 0.0, s.get("selection_flops") or 0.0
        else:
            last = next((r for r in reversed((metrics or {}).get(p, [])) if "train_s_total" in r), None)
            if last is None:  # no summary, and metrics from before train_s_total was logged (or none yet)
                continue
            ts, ss = last["train_s_total"], last.get("selection_s_total") or 0.0
            tf, sf = last.get("train_flops_total") or 0.0, last.get("selection_flops_total") or 0.0
            p, running = f"{p} (step {last['step']}, running)", True
        rows.append(f"| {p} | {ts:.1f} | {ss:.1f} | {ss / ts if ts else 0:.1%} | {tf:.3g} | {sf:.3g} | "
                    f"{sf / tf if tf else 0:.1%} |")
    if not rows:
        return []
    note = (["A run marked running has no summary.json yet (still training, or killed): its totals are those of its "
             "last metrics.jsonl line."] if running else [])
    return ["## Compute: selection against training", "",
            "| policy | train s | selection s | selection/train time | train FLOPs | selection FLOPs | "
            "selection/train FLOPs |", "|---|---:|---:|---:|---:|---:|---:|", *rows, "", COMPUTE_NOTE, "",
            *(note + [""] if note else [])]


COMPUTE_NOTE = ("Per update, selection costs about 4N x (tokens scored + reference and factor-fit tokens) and "
                "training 6N x (update_every x batch tokens): the ratio follows the settings "
                "(`samples_per_category`, `update_every`, `reference_max_examples`), not the engine. A small "
                "run that scores about as many tokens as it trains spends about half its training FLOPs; the "
                "multi-agent paper's settings give about 3-6% (docs/experiments.md, 'What sets the ratio').")


def run_labels(dirs: list[str | Path]) -> dict[str, Path]:
    """Each run folder under a name for the report: its folder name, or as many trailing path parts as tell
    it apart from the others (runs/a/multi-agent and runs/b/multi-agent: a/multi-agent, b/multi-agent).
    A folder without metrics.jsonl is a one-line error."""
    paths = [Path(d) for d in dirs]
    for p in paths:
        if not (p / "metrics.jsonl").is_file():
            inner = sorted(c.parent.name for c in p.glob("*/metrics.jsonl")) if p.is_dir() else []
            hint = f"; it holds the run folders {', '.join(inner)}: give those" if inner else ""
            raise ThresherError(f"{p} is not a run folder (no metrics.jsonl): give `thresher train` out folders{hint}")
    resolved = [p.resolve() for p in paths]
    if len(set(resolved)) < len(resolved):
        raise ThresherError("a run folder is named twice")
    for k in range(1, max(len(r.parts) for r in resolved) + 1):
        names = ["/".join(r.parts[-k:]) for r in resolved]
        if len(set(names)) == len(names):
            return dict(zip(names, paths))
    raise ThresherError("run folders that cannot be told apart")  # unreachable: resolved paths differ


def write_report(out_dir: str | Path, runs: dict[str, Path], title: str = "thresher report",
                 extra_md: str = "") -> Path:
    """``runs``: policy -> run directory (with metrics.jsonl and selector_log.jsonl)."""
    out_dir = make_dir(out_dir)
    metrics = {p: read_jsonl(Path(d) / "metrics.jsonl") for p, d in runs.items()}
    plot_ref_losses(metrics, out_dir / "ref_loss.png")
    lines = [f"# {title}", "", "## Final reference loss (mean NLL per continuation token; lower is better)", ""]
    lines += final_table({p: final_ref_losses(m) for p, m in metrics.items()})
    lines += ["", "![reference loss](ref_loss.png)", ""]
    heldout = {p: final_ref_losses(m, HELDOUT_PREFIX) for p, m in metrics.items()}
    if any(heldout.values()):
        lines += ["## Final held-out pool loss per domain (per value of data.heldout_column: mean NLL per token of "
                  "held-out pool documents that no policy could select; lower is better)", "",
                  *final_table(heldout), ""]
    lines += compute_table(runs, metrics)
    lines += passes_table(metrics)
    for p, d in runs.items():
        log = read_jsonl(Path(d) / "selector_log.jsonl")
        if plot_agent_weights(log, out_dir / f"weights_{p}.png"):
            lines += [f"## Agent weights: {p}", "", f"![weights {p}](weights_{p}.png)", ""]
    lines.append(extra_md)
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
