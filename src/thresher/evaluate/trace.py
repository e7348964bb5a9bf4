"""``thresher trace``: for given documents, every stage of a run: whether the document was in D_k (the run's
saved ``selections/``), its labels, and for console policies the theta and agent weights that scored it (Eq. 7)
with the provenance of the rewards behind them (docs/agents.md, "Tracing a selected document")."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thresher.agents.base import selection_digest
from thresher.evaluate.report import read_jsonl
from thresher.utils.errors import ThresherError

PROVENANCE = ("step", "factors_step", "lambda_step", "tasks")  # what a trace keeps of a log entry's `rewards`


def trace(run_dir: str | Path, doc_ids: list[int], labels: str | Path | None = None,
          store: str | Path | None = None, verify: bool = False) -> list[dict]:
    """One dict per document: ``doc``, ``labels`` {agent label: category (None: missing)}, ``stages`` (one per
    selector log entry: ``step``, ``selected`` (None: not saved), and where the log has them ``theta``,
    ``weights`` {agent: weight of the doc's category}, ``score`` (Eq. 7), ``cut`` (the lowest score in D_k),
    ``rewards``, ``arm_played``; with ``selector.reuse_penalty`` > 0 also ``reused`` (the doc was in an earlier
    D_k) and ``penalised`` (the score the ranking used: S - reuse_penalty if reused), the cut then on those; under
    ``selector.selection = "gumbel"`` ``gumbel_temperature``: D_k was drawn, so the cut is no threshold, and
    ``inclusion_probability``: the chance that such a draw of D_k's size puts the document in it, from the whole
    pool's scores (agents.select.gumbel_inclusion; None where a weight or, for a token budget, the token store is
    unknown)), and,
    for a run with held-out pool documents (``data.heldout_docs``), ``heldout``: whether the document was held out
    for evaluation, so that no stage could select it (the draw needs the run's token store: ``store``, else the one
    its config.toml names). ``verify``: each saved D_k must hash to its entry's ``selection_sha1``."""
    from thresher.config import load_run_config
    from thresher.labels.table import LabelTable

    run_dir = Path(run_dir)
    log = read_jsonl(run_dir / "selector_log.jsonl")
    if not log or not (run_dir / "config.toml").is_file():
        raise ThresherError(f"{run_dir} is not a run folder (no selector_log.jsonl or config.toml)")
    if not any("selection_file" in e for e in log):
        raise ThresherError(f"{run_dir} saved no selections (selector.save_selections = 'auto' saves them for pools of "
                            "up to 50M docs); rerun with --set selector.save_selections=always")
    cfg = load_run_config(run_dir / "config.toml")
    labels = Path(labels or cfg.data.labels)
    if not LabelTable.exists(labels):
        raise ThresherError(f"no label table at {labels}: give --labels (config.toml's paths are relative to where "
                            "the run was started)")
    table = LabelTable.open(labels)
    bad = [d for d in doc_ids if not 0 <= d < table.n_docs]
    if bad:
        raise ThresherError(f"doc ids {bad} are not in the pool (0 .. {table.n_docs - 1})")
    ids = np.asarray(doc_ids, dtype=np.int64)
    columns = table.category_columns(cfg.data.label_columns)  # {agent label: label table column}
    codes = {name: np.asarray(table.codes(col))[ids] for name, col in columns.items()}
    names = {name: table.categories(col) for name, col in columns.items()}
    agent_column = {a["agent"]: a.get("column", a["agent"]) for a in log[0].get("agents", [])}
    chosen = {i: _load_selection(run_dir, e, verify) for i, e in enumerate(log) if "selection_file" in e}  # once each
    selected = {i: np.isin(ids, c) for i, c in chosen.items()}
    states = _console_states(log)
    penalty = float(cfg.selector.reuse_penalty) if "theta" in log[0] else 0.0
    trained = _trained_before(log, chosen) if penalty > 0 else {}
    reused = {i: None if t is None else np.isin(ids, t) for i, t in trained.items()}  # per stage, as `selected`
    cuts = _cuts(log, chosen, states, table, columns, agent_column, penalty, trained)
    held = _heldout(cfg, table, store, ids)
    gumbel = cfg.selector.selection == "gumbel"
    inclusion = (_inclusion(log, chosen, states, table, columns, agent_column, cfg, store, ids, penalty, trained)
                 if gumbel else {})
    out = []
    for k, doc in enumerate(doc_ids):
        code = {name: int(c[k]) for name, c in codes.items()}
        stages = []
        for i, e in enumerate(log):
            stage = {"step": e["step"], "selected": bool(selected[i][k]) if i in selected else None}
            if i in states:
                stage.update(_scored(e, *states[i], agent_column, code))
                if penalty > 0 and e["step"] > 0:  # the reuse penalty: S - p for a doc of an earlier D_k
                    was = None if reused[i] is None else bool(reused[i][k])
                    stage["reused"] = was
                    stage["penalised"] = (None if was is None or stage["score"] is None
                                          else stage["score"] - penalty * was)
                if i in cuts:
                    stage["cut"] = cuts[i]
                if gumbel and not stage.get("initial"):  # a draw by S / tau + Gumbel noise, not the top of S
                    stage["gumbel_temperature"] = float(cfg.selector.temperature)
                    p = inclusion.get(i)
                    stage["inclusion_probability"] = None if p is None else float(p[k])
            elif e.get("initial"):  # quad, mates: how D_0 was drawn
                stage["initial"] = e["initial"]
            if "arms" in e and cfg.selector.bandit_column in code:  # Quad: was the doc's cluster played
                stage["arm_played"] = code[cfg.selector.bandit_column] in e["arms"]["played"]
            if e.get("rewards"):
                stage["rewards"] = {key: e["rewards"][key] for key in PROVENANCE if key in e["rewards"]}
            stages.append(stage)
        out.append({"doc": doc, "labels": {n: names[n][c] if c >= 0 else None for n, c in code.items()},
                    "stages": stages})
        if held is not None:
            out[-1]["heldout"] = bool(held[k])
    return out


def _inclusion(log: list[dict], chosen: dict, states: dict, table, columns: dict, agent_column: dict, cfg,
               store: str | Path | None, ids: np.ndarray, penalty: float, trained: dict) -> dict[int, np.ndarray | None]:
    """Log entry index -> (len(ids),) the probability that a Gumbel-top-k draw of that entry's D_k size (documents,
    or tokens for a token budget) selects each of ``ids``, from Eq. 7's S of every pool document as the selector
    scored it (a missing label: the mean weight, or never under selector.missing = "exclude"; the reuse penalty;
    held-out documents never). None where a weight is unknown, or a token budget's store is not at hand."""
    from thresher.agents.select import gumbel_inclusion
    from thresher.corpus.store import TokenStore

    n = table.n_docs
    codes = {name: np.asarray(table.codes(col)) for name, col in columns.items()}
    held = _heldout(cfg, table, store, np.arange(n))
    lengths = None
    if cfg.selector.budget_tokens is not None:
        path = Path(store or cfg.data.store)
        lengths = TokenStore.open(path).lengths if (path / "store.json").is_file() else None
    out = {}
    for i, (theta, weights) in states.items():
        e = log[i]
        if i not in chosen or e["step"] == 0 and e.get("initial") == "random":
            continue
        score = np.zeros(n)
        for agent, th in theta.items():
            name = agent_column.get(agent, agent)
            if weights.get(agent) is None or name not in codes or score is None:
                score = None
                continue
            w = np.asarray(weights[agent], dtype=np.float64)
            finite = w[np.isfinite(w)]
            missing = -np.inf if cfg.selector.missing == "exclude" else (finite.mean() if len(finite) else 0.0)
            score += th * np.append(w, missing)[codes[name]]  # code -1 -> the missing score
        if score is not None and penalty > 0:
            score = None if trained[i] is None else score - penalty * np.isin(np.arange(n), trained[i])
        if score is None or lengths is None and cfg.selector.budget_tokens is not None:
            out[i] = None
            continue
        pool = np.isfinite(score) if held is None else np.isfinite(score) & ~held
        values, inverse = np.unique(score[pool], return_inverse=True)
        if lengths is None:
            amount, target = np.bincount(inverse, minlength=len(values)), len(chosen[i])
        else:
            amount = np.bincount(inverse, np.asarray(lengths)[pool], minlength=len(values))
            target = int(np.asarray(lengths)[np.asarray(chosen[i], dtype=np.int64)].sum())
        p = gumbel_inclusion(values, amount, float(cfg.selector.temperature), target) if len(values) else values
        doc_p = np.zeros(len(ids))
        ok = pool[ids]
        doc_p[ok] = p[np.searchsorted(values, score[ids[ok]])]
        out[i] = doc_p
    return out


def _heldout(cfg, table, store: str | Path | None, ids: np.ndarray) -> np.ndarray | None:
    """Which of ``ids`` the run held out of its pool (data.heldout_docs), drawn as the run drew them; None when
    the run held out nothing."""
    if cfg.data.heldout_docs <= 0:
        return None
    from thresher.corpus.store import TokenStore
    from thresher.evaluate.heldout import heldout_groups

    path = Path(store or cfg.data.store)
    if not (path / "store.json").is_file():
        raise ThresherError(f"no token store at {path}: the run held out data.heldout_docs = {cfg.data.heldout_docs} "
                            "documents per value, drawn from the store's lengths; give --store (config.toml's "
                            "paths are relative to where the run was started)")
    groups = heldout_groups(cfg.data, table, TokenStore.open(path).lengths, cfg.train.eval_max_len)
    return np.isin(ids, np.concatenate(list(groups.values())))


def _load_selection(run_dir: Path, entry: dict, verify: bool = False) -> np.ndarray:
    """The entry's saved D_k (memory-mapped), checked against the entry's size (and with ``verify`` its SHA-1)."""
    path = run_dir / entry["selection_file"]
    if not path.is_file():
        raise ThresherError(f"{path} is missing (the selector log's step-{entry['step']} entry names it)")
    chosen = np.load(path, mmap_mode="r")
    if len(chosen) != entry["selected"]:
        raise ThresherError(f"{path} holds {len(chosen)} doc ids where the log's step-{entry['step']} entry selected "
                            f"{entry['selected']}: not this run's selection")
    if verify and entry.get("selection_sha1") and selection_digest(chosen) != entry["selection_sha1"]:
        raise ThresherError(f"{path} does not hash to the log's step-{entry['step']} selection_sha1: not this run's "
                            "selection")
    return chosen


def _console_states(log: list[dict]) -> dict[int, tuple[dict, dict]]:
    """Console entry index -> (theta {agent: theta_A}, weights {agent: its weights as of the entry}); an agent's
    weights are carried from the step-0 entry until an update logs new ones."""
    states, weights = {}, {}
    for i, e in enumerate(log):
        if "theta" in e:
            weights.update({a["agent"]: a.get("weights") for a in e.get("agents", [])})
            theta = dict(zip([a["agent"] for a in e.get("agents", [])] or list(weights), e["theta"]))
            states[i] = (theta, dict(weights))
    return states


def _trained_before(log: list[dict], chosen: dict) -> dict[int, np.ndarray | None]:
    """Log entry index -> the sorted ids of every earlier entry's D_k: the docs the reuse penalty lowered at that
    update (the multi-agent selectors mark the stage that just ended as trained on before re-selecting, so at
    entry i the trained docs are D_0 .. D_{i-1}); None when an earlier D_k was not saved."""
    out, seen, complete = {}, np.zeros(0, dtype=np.int64), True
    for i in range(len(log)):
        out[i] = seen if complete else None
        if i in chosen:
            seen = np.union1d(seen, np.asarray(chosen[i], dtype=np.int64))
        else:
            complete = False
    return out


def _cuts(log: list[dict], chosen: dict, states: dict, table, columns: dict, agent_column: dict,
          penalty: float = 0.0, trained: dict | None = None) -> dict[int, float | None]:
    """Log entry index -> the lowest score among its D_k's documents (the cut: top-k keeps every document scoring
    above it), for the console entries with a saved selection that were scored (not a random D_0); None where a
    weight is unknown. The score is Eq. 7's S, less ``penalty`` for the docs of ``trained[i]`` (the reuse
    penalty; None there: unknown). One vectorised pass over each D_k's labels."""
    cuts = {}
    for i, (theta, weights) in states.items():
        e = log[i]
        if i not in chosen or e["step"] == 0 and e.get("initial") == "random":
            continue
        ids = np.asarray(chosen[i], dtype=np.int64)
        total = np.zeros(len(ids))
        for agent, th in theta.items():
            name = agent_column.get(agent, agent)
            if weights.get(agent) is None or name not in columns:
                total = None
                break
            w = np.append(np.asarray(weights[agent], dtype=np.float64), np.nan)  # code -1 (missing label) -> NaN
            total += th * w[np.asarray(table.codes(columns[name]))[ids]]
        if total is not None and penalty > 0:
            total = None if trained[i] is None else total - penalty * np.isin(ids, trained[i])
        ok = total is not None and np.isfinite(total).any()
        cuts[i] = float(np.nanmin(total)) if ok else None
    return cuts


def _scored(entry: dict, theta: dict, weights: dict, agent_column: dict, code: dict) -> dict:
    """theta, each agent's weight of the doc's category and Eq. 7's S (None where a weight is unknown: a missing
    label, the bandit before its first update)."""
    w = {}
    for agent in theta:
        c = code.get(agent_column.get(agent, agent), -1)
        w[agent] = weights[agent][c] if weights.get(agent) is not None and c >= 0 else None
    score = None if None in w.values() else float(sum(theta[a] * w[a] for a in theta))
    out = {"theta": theta, "weights": w, "score": score}
    if entry["step"] == 0 and entry.get("initial") == "random":
        out["initial"] = "random"  # D_0 is a uniform draw, not scored
    return out


def render(traces: list[dict]) -> str:
    """The traces as text: a line per document (its labels), then a line per stage."""
    lines = []
    for t in traces:
        lines.append(f"doc {t['doc']}: " + "  ".join(f"{n}={c if c is not None else '<missing>'}"
                                                    for n, c in t["labels"].items())
                     + ("  (held out for evaluation: no stage could select it)" if t.get("heldout") else ""))
        for s in t["stages"]:
            mark = "held out" if t.get("heldout") else {True: "selected", False: "-", None: "not saved"}[s["selected"]]
            parts = []
            if s.get("initial"):
                parts.append(f"initial stage: {s['initial']}")
            elif "theta" in s:
                terms = ", ".join(f"{a} {th:.3g} x {_num(s['weights'][a])}" for a, th in s["theta"].items())
                cut = f"; D_k's lowest {_num(s['cut'])}" if "cut" in s else ""
                if "gumbel_temperature" in s:  # the cut is then no threshold: a lower S may be drawn, a higher not
                    p = s.get("inclusion_probability")
                    cut += (f"; Gumbel-top-k at tau {s['gumbel_temperature']:.3g}: a draw, so a selected document "
                            "may score below one not selected" + ("" if p is None else f"; in D_k with p {p:.3g}"))
                reuse = ""
                if "reused" in s:  # reuse_penalty > 0: the ranking used S - p for docs of an earlier D_k
                    reuse = {None: ", trained before: unknown (an earlier D_k not saved)",
                             False: ", not trained before"}.get(s["reused"], f", trained before: S - p {_num(s['penalised'])}")
                parts.append(f"S {_num(s['score'])} (theta x weight: {terms}{reuse}{cut})")
            if "arm_played" in s:
                parts.append("its cluster played" if s["arm_played"] else "its cluster not played")
            if "rewards" in s:
                r = s["rewards"]
                parts.append(f"rewards: model step {r.get('step')}" + (f", factors step {r['factors_step']}"
                                                                       if "factors_step" in r else "")
                             + (f", tasks {', '.join(r['tasks'])}" if r.get("tasks") else ""))
            lines.append(f"  step {s['step']:>6}  {mark:<9}  " + "; ".join(parts))
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "?" if x is None else f"{x:.4g}"
