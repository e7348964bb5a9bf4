"""``thresher experiment CONFIG``: several policies x several seeds on the same pool, one results table.

One TOML file holds the base run config (the ``[data]``, ``[selector]``, ``[influence]``, ``[train]``
tables of ``thresher train``) and an ``[experiment]`` table:

    [experiment]
    out = "runs/pool-exp"
    seeds = [0, 1]
    policies = ["random", "doremi", "quad", "multi-agent"]   # POLICIES names or variant names
    [experiment.variants.doremi]                              # a named policy + overrides
    policy = "static-mixture"
    set = ["selector.mixture=doremi"]

Every (policy, seed) trains under ``<out>/runs/<policy>/seed<k>`` with the seed set everywhere (run,
selector, influence, trainer). A finished run (``summary.json``) is never redone; an interrupted one
resumes from its newest checkpoint. The report (``results.md``/``results.json``, plots) is rebuilt from
the runs' own files after every run, so it holds measured numbers only.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from thresher.agents.policies import POLICIES
from thresher.config import SEEDED_SECTIONS, RunConfig, run_config_from_dict
from thresher.evaluate.report import SUMMARY
from thresher.utils.errors import SettingsMismatchError, ThresherError
from thresher.utils.io import atomic_write_json, make_dir, read_json, remove_stale_temps
from thresher.utils.log import print0
from thresher.utils.tomlio import apply_overrides, differences, from_dict, load_toml, to_dict


@dataclass
class ExperimentConfig:
    out: str = "runs/experiment"  # runs/<policy>/seed<k>, results.md, results.json, plots
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # each run's top-level seed (selection, model init, data order)
    policies: list[str] = field(default_factory=lambda: ["random", "multi-agent"])  # POLICIES names or variant names
    # name -> {"policy": a POLICIES name, "set": ["section.key=value", ...]}
    variants: dict = field(default_factory=dict)
    # build the synthetic world (``thresher demo``'s) with this many documents and use it as [data];
    # 0 = use the [data] table as given
    synthetic_docs: int = 0
    downstream: bool = False  # lm-evaluation-harness on every final model (settings: [experiment.eval])
    eval: dict = field(default_factory=dict)  # EvalConfig fields
    confidence: float = 0.95  # of the t-interval over seeds in the results table
    baseline: str = "random"  # the row the table's differences are taken against

    def validate(self) -> None:
        if not self.seeds or not self.policies:
            raise ThresherError("experiment.seeds and experiment.policies must not be empty")
        if len(set(self.policies)) != len(self.policies):
            raise ThresherError("experiment.policies lists a policy twice")
        for name in self.policies:
            v = self.variants.get(name)
            policy = v.get("policy") if isinstance(v, dict) else name
            if not isinstance(policy, str) or policy not in POLICIES:
                raise ThresherError(f"experiment policy {name!r} is neither a policy ({', '.join(POLICIES)}) "
                                    f"nor a variant with a known `policy`")
        if not 0 < self.confidence < 1:
            raise ThresherError("experiment.confidence must be in (0, 1)")
        if self.baseline not in self.policies:
            raise ThresherError(f"experiment.baseline = {self.baseline!r} is not one of experiment.policies {self.policies}")
        for name, v in self.variants.items():
            where = f"experiment.variants.{name}"
            if not isinstance(v, dict) or set(v) - {"policy", "set"}:
                raise ThresherError(f"{where} must be a table with `policy` and `set` only")
            sets = v.get("set", [])
            if not isinstance(sets, list) or not all(isinstance(x, str) for x in sets):
                raise ThresherError(f'{where}.set must be a list of overrides, e.g. set = ["selector.mixture=doremi"]')


def load_experiment(path: str | Path | None, overrides: list[str] | None = None) -> tuple[ExperimentConfig, dict]:
    """(experiment settings, the base run config as a plain dict) from one TOML file + ``--set`` overrides."""
    data = apply_overrides(load_toml(path) if path else {}, list(overrides or []))
    if "experiment" not in data:  # a run config given by mistake would compare the default policies
        raise ThresherError(f"{path or 'the config'} has no [experiment] table: `thresher experiment` takes an "
                            "experiment config (configs/experiment_*.toml); a run config goes to `thresher train`")
    exp = from_dict(ExperimentConfig, data.pop("experiment"), "experiment")
    exp.validate()
    for name in exp.policies:  # every variant's overrides resolve, before anything trains
        run_config_for(exp, data, name, exp.seeds[0])
    if exp.downstream:  # and the evaluation settings, which are read only after the first run trained
        from thresher.evaluate.config import EvalConfig

        from_dict(EvalConfig, dict(exp.eval), "experiment.eval")
    return exp, data


def run_config_for(exp: ExperimentConfig, base: dict, name: str, seed: int) -> RunConfig:
    """The resolved RunConfig of one (policy or variant, seed)."""
    data = copy.deepcopy(base)
    variant = exp.variants.get(name, {})
    try:
        apply_overrides(data, list(variant.get("set", [])))
        data["out"] = str(Path(exp.out) / "runs" / name / f"seed{seed}")
        data["seed"] = seed
        for section in SEEDED_SECTIONS:  # the run's seed everywhere, even where the base sets a section seed
            if isinstance(data.setdefault(section, {}), dict):  # (not a table: from_dict says so)
                data[section]["seed"] = seed
        if isinstance(data["selector"], dict):
            data["selector"]["policy"] = variant.get("policy", name)
        return run_config_from_dict(data)
    except ThresherError as e:
        raise ThresherError(f"experiment policy {name!r}: {e}") from None


def _prepare_synthetic(exp: ExperimentConfig, base: dict) -> dict:
    """Build (or reuse) the demo's synthetic world under ``<out>/world`` and point [data] at it."""
    from thresher.experiments.demo import DemoConfig, _gather

    world, store, labels = _gather(Path(exp.out) / "world", DemoConfig(seed=0, n_docs=exp.synthetic_docs))
    base = copy.deepcopy(base)
    base.setdefault("data", {}).update(store=str(store), labels=str(labels), reference=dict(world["reference"]))
    return base


def check_same_settings(cfg: RunConfig, run_dir: Path, other_out: str = "choose another experiment.out") -> None:
    """The run folder's config.toml, read back (fields it lacks take their defaults: a run saved before an
    option existed ran with its default), must equal ``cfg``; else an error naming the differing settings."""
    saved = run_dir / "config.toml"
    if not saved.exists():
        return
    try:
        diff = differences(to_dict(run_config_from_dict(load_toml(saved))), to_dict(cfg))
    except ThresherError as e:  # a field this version no longer has, or a value it refuses
        diff = [f"its config.toml does not load: {e}"]
    if diff:
        more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
        raise SettingsMismatchError(f"{run_dir} was made with other settings ({'; '.join(diff[:3])}{more}); "
                                    f"delete it or {other_out}")


def run_or_keep(cfg: RunConfig, tag: str, what: str, callbacks=()) -> Path:
    """Train ``cfg`` unless its folder holds a summary.json (a finished run is never redone); an interrupted
    run resumes from its newest checkpoint. Returns the run folder."""
    from thresher.experiments.run import run, write_summary

    run_dir = Path(cfg.out)
    if (run_dir / SUMMARY).exists():
        print0(f"{tag} {what}: finished earlier, kept")
        return run_dir
    print0(f"{tag} {what} -> {run_dir}")
    t = time.perf_counter()
    summary = run(cfg, resume=(run_dir / "checkpoints").exists(), callbacks=callbacks)
    if not summary.get("finished"):
        raise ThresherError(f"{what} stopped at step {summary.get('step')}; rerun to resume")
    write_summary(run_dir, summary, time.perf_counter() - t)
    return run_dir


def run_experiment(exp: ExperimentConfig, base: dict, callbacks=(), only: list[str] | None = None,
                   seeds: list[int] | None = None) -> Path:
    """Run every missing (policy, seed), then write the report; returns the path of results.md.

    ``only`` / ``seeds`` restrict what trains now (e.g. one process per seed on one GPU); the report
    always covers every finished run of the experiment."""
    out = Path(exp.out)
    make_dir(out)
    remove_stale_temps(out)  # results.md, plots, ... of a killed report
    if exp.synthetic_docs:
        base = _prepare_synthetic(exp, base)
    names = [n for n in exp.policies if not only or n in only]
    unknown = sorted(set(only or []) - set(exp.policies))
    if unknown:
        raise ThresherError(f"--only {unknown}: not in experiment.policies {exp.policies}")
    todo = [(n, s) for s in (seeds or exp.seeds) for n in names]
    cfgs = [run_config_for(exp, base, name, seed) for name, seed in todo]
    for cfg in cfgs:  # every existing run folder matches, before anything trains
        check_same_settings(cfg, Path(cfg.out))
    for i, ((name, seed), cfg) in enumerate(zip(todo, cfgs), 1):
        run_dir = run_or_keep(cfg, f"[experiment {i}/{len(todo)}]", f"{name} seed {seed}", callbacks)
        if exp.downstream:
            _downstream(exp, run_dir)
        report = write_results(exp)  # after every run, so a kill leaves a table of what finished
    return report if todo else write_results(exp)


def report_only(exp: ExperimentConfig, base: dict) -> Path:
    """``--report-only``: results.md from the finished runs, once every run folder it reads is checked against
    the experiment's settings as given now (a ``--set train.lr=...`` would otherwise put old runs in a table
    under new settings); trains nothing. Returns the path of results.md."""
    if exp.synthetic_docs:
        if not (Path(exp.out) / "world").exists():  # no world: no run of it either
            return write_results(exp)
        base = _prepare_synthetic(exp, base)  # its stages are complete: nothing is rebuilt
    for name in exp.policies:
        for seed in exp.seeds:
            cfg = run_config_for(exp, base, name, seed)
            check_same_settings(cfg, Path(cfg.out), "drop the --set that changed them")
    return write_results(exp)


def _downstream(exp: ExperimentConfig, run_dir: Path) -> None:
    from thresher.evaluate.config import EvalConfig, run_eval
    from thresher.evaluate.downstream import RESULTS_FILE

    if (run_dir / "downstream" / RESULTS_FILE).exists():
        return
    model_dir = read_json(run_dir / SUMMARY).get("model_dir")
    if not model_dir:
        raise ThresherError(f"{run_dir} exported no model (train.export = false); downstream evaluation needs it")
    run_eval(from_dict(EvalConfig, dict(exp.eval), "experiment.eval"), model_dir, run_dir / "downstream")


# --- the report ---------------------------------------------------------------------------------------------
def collect(exp: ExperimentConfig) -> dict:
    """name -> seed -> {ref: {task: loss}, heldout: {label value: held-out pool loss}, tokens (trained), summary,
    curve: (steps, mean ref loss), curve_tokens
    (tokens trained at those steps), ref_at_tokens: {tokens: {task: loss}} at every evaluation, downstream?}
    of finished runs."""
    from thresher.evaluate.downstream import RESULTS_FILE
    from thresher.evaluate.report import HELDOUT_PREFIX, final_ref_losses, read_jsonl, ref_curves

    runs: dict = {}
    for name in exp.policies:
        for seed in exp.seeds:
            d = Path(exp.out) / "runs" / name / f"seed{seed}"
            if not (d / SUMMARY).exists():
                continue
            metrics = read_jsonl(d / "metrics.jsonl")
            ref = final_ref_losses(metrics)
            curves = ref_curves(metrics)
            steps = sorted(set.intersection(*(set(s) for s, _ in curves.values()))) if curves else []
            by_step = {t: dict(zip(s, v)) for t, (s, v) in curves.items()}
            mean_curve = [sum(by_step[t][st] for t in by_step) / len(by_step) for st in steps]
            tokens_at = {int(m["step"]): int(m["tokens"]) for m in metrics if "step" in m and "tokens" in m}
            summary = read_json(d / SUMMARY)
            row = {"dir": str(d), "ref": ref, "heldout": final_ref_losses(metrics, HELDOUT_PREFIX),
                   "tokens": summary.get("tokens"), "summary": summary,
                   "curve": [steps, mean_curve], "curve_tokens": [tokens_at.get(st) for st in steps],
                   "ref_at_tokens": {}}
            for t, st_loss in by_step.items():
                for st, loss in st_loss.items():
                    if st in tokens_at:
                        row["ref_at_tokens"].setdefault(tokens_at[st], {})[t] = loss
            ds = d / "downstream" / RESULTS_FILE
            if ds.exists():
                row["downstream"] = json.loads(ds.read_text(encoding="utf-8"))
            runs.setdefault(name, {})[seed] = row
    return runs


def mean_ci(values: list[float], confidence: float) -> tuple[float, float | None]:
    """Mean and the half-width of the Student-t interval (None for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))


def _fmt(mean: float, half: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return f"{mean * scale:.{digits}f}" + ("" if half is None else f" ± {half * scale:.{digits}f}")


def ref_table(exp: ExperimentConfig, runs: dict, key: str = "ref") -> tuple[list[str], dict]:
    """Markdown rows of the reference-loss table + its numbers (per task and mean over tasks); ``key`` "heldout":
    the same table of the held-out pool loss per label value.

    A seed's "mean" is over every task (a seed that lacks one is left out of the mean column, not averaged
    over fewer tasks); the difference to the baseline is the mean of per-seed differences over the seeds
    both have (paired: equal to the difference of means when the seed sets agree), with their count."""
    tasks = sorted({t for seeds in runs.values() for r in seeds.values() for t in r.get(key, {})})
    numbers: dict = {}
    per_seed_mean: dict = {}
    for name, seeds in runs.items():
        per = {t: [r[key][t] for r in seeds.values() if t in r.get(key, {})] for t in tasks}
        per_seed_mean[name] = {s: sum(r[key][t] for t in tasks) / len(tasks) for s, r in sorted(seeds.items())
                               if tasks and all(t in r.get(key, {}) for t in tasks)}
        per["mean"] = list(per_seed_mean[name].values())
        numbers[name] = {k: {"values": v, "mean_ci": mean_ci(v, exp.confidence) if v else None}
                         for k, v in per.items()} | {"seeds": sorted(seeds), "mean_seeds": sorted(per_seed_mean[name])}
    base = per_seed_mean.get(exp.baseline, {})
    head = ["policy", "seeds", "tokens", *tasks, "mean", f"Δ mean vs {exp.baseline}", "seed range"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|" + "---:|" * (len(tasks) + 3)]
    for name, num in numbers.items():
        trained = sorted({r["tokens"] for r in runs[name].values() if r.get("tokens") is not None})
        num["tokens"] = trained
        cells = [name, str(len(num["seeds"])), "-".join(_tokens(n) for n in trained) or "-"]
        cells += [_fmt(*num[t]["mean_ci"]) if num[t]["mean_ci"] else "-" for t in tasks + ["mean"]]
        vals = num["mean"]["values"]
        delta = "-"
        if name != exp.baseline:
            delta, info = paired_delta(per_seed_mean[name], base, exp.confidence)
            num.update(info)
        cells += [delta, f"{_range(vals):.3f}" if len(vals) > 1 else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines, numbers


def paired_delta(mine: dict, base: dict, confidence: float) -> tuple[str, dict]:
    """The cell and numbers of a difference to the baseline, from per-seed values (seed -> value) of a policy and
    the baseline: the mean of the per-seed differences over the seeds both have ± their paired Student-t interval,
    starred when larger than both seed ranges, with the count of shared seeds when the seed sets differ."""
    shared = sorted(set(mine) & set(base))
    if not shared:
        return ("n/a (no seed shared with the baseline)" if mine else "-"), {}
    a, b = [mine[s] for s in shared], [base[s] for s in shared]
    d, half = mean_ci([x - y for x, y in zip(a, b)], confidence)
    big = bool(len(shared) > 1 and abs(d) > max(_range(a), _range(b)))
    partial = len(shared) < max(len(mine), len(base))  # the seed sets differ
    cell = (f"{d:+.3f}" + ("" if half is None else f" ± {half:.3f}") + (" *" if big else "")
            + (f" ({len(shared)} shared seeds)" if partial else ""))
    # delta_ci: half-width of the paired Student-t interval (None for one shared seed)
    return cell, {"delta_vs_baseline": d, "exceeds_seed_range": big, "delta_seeds": shared, "delta_ci": half}


def heldout_rows(exp: ExperimentConfig, runs: dict) -> tuple[list[str], dict]:
    """The held-out pool loss per label value: the reference table's layout, then each value's paired difference to
    the baseline (does a policy win on the reference tasks by giving up other domains?)."""
    if not any(r.get("heldout") for seeds in runs.values() for r in seeds.values()):
        return [], {}
    table, numbers = ref_table(exp, runs, "heldout")
    values = sorted({v for seeds in runs.values() for r in seeds.values() for v in r.get("heldout", {})})
    base = runs.get(exp.baseline, {})
    deltas = ["| policy | " + " | ".join(values) + " |", "|---|" + "---:|" * len(values)]
    for name, seeds in runs.items():
        if name == exp.baseline:
            continue
        cells = []
        for v in values:
            cell, info = paired_delta({s: r["heldout"][v] for s, r in seeds.items() if v in r.get("heldout", {})},
                                      {s: r["heldout"][v] for s, r in base.items() if v in r.get("heldout", {})},
                                      exp.confidence)
            cells.append(cell)
            numbers[name].setdefault(v, {})["delta"] = info
        deltas.append(f"| {name} | " + " | ".join(cells) + " |")
    lines = ["## Held-out pool loss per domain", "",
             "Mean NLL per token of held-out pool documents (the same ids for every policy and seed; no policy could "
             "select them), per value of `data.heldout_column`, at the end of training; mean ± interval over seeds "
             "as above, `mean` is the unweighted mean over the values.", "", *table, "",
             f"Per value, Δ vs {exp.baseline} (paired over seeds as above; positive: the policy is worse there "
             f"than {exp.baseline}):", "", *deltas, ""]
    return lines, numbers


def _tokens(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.4g}{unit}"
    return str(n)


def equal_tokens_rows(exp: ExperimentConfig, runs: dict) -> tuple[list[str], dict]:
    """When the runs trained different numbers of tokens (a variant with its own steps or batch), the table
    again at the fewest tokens any run trained: each run's reference loss at its evaluation after exactly
    that many tokens (a run that did not evaluate there is left out and named)."""
    trained = {r.get("tokens") for seeds in runs.values() for r in seeds.values()}
    if len(trained) < 2 or None in trained:
        return [], {}
    at = min(trained)
    same = {n: {s: r | {"ref": r["ref_at_tokens"][at], "tokens": at} for s, r in seeds.items()
                if at in r.get("ref_at_tokens", {})} for n, seeds in runs.items()}
    lacking = [f"{n}/seed{s}" for n, seeds in runs.items() for s, r in sorted(seeds.items())
               if at not in r.get("ref_at_tokens", {})]
    table, numbers = ref_table(exp, {n: v for n, v in same.items() if v})
    lines = [f"## At equal tokens: {at:,} (the fewest any run trained)", "",
             "The runs trained different numbers of tokens (column `tokens`), so the final losses above are not "
             "at equal data; here each run's reference loss at its evaluation after exactly that many tokens.", "",
             *table, ""]
    if lacking:
        lines += [f"No evaluation at {at:,} tokens (left out; choose train.eval_every so that every run evaluates "
                  f"there): {', '.join(lacking)}", ""]
    return lines, {"tokens": at, "reference_loss": numbers}


def _range(values: list[float]) -> float:
    return max(values) - min(values) if values else 0.0


def downstream_table(exp: ExperimentConfig, runs: dict, metric: str = "acc") -> list[str]:
    """Paper Table 1 layout: categories + average (percent), mean ± CI over seeds."""
    have = {n: [r["downstream"] for r in s.values() if "downstream" in r] for n, s in runs.items()}
    have = {n: v for n, v in have.items() if v}
    if not have:
        return []
    cats = list(dict.fromkeys(c for res in have.values() for r in res for c in r["categories"]))
    tasks = list(dict.fromkeys(t for res in have.values() for r in res for t in r["tasks"]))
    head = ["policy", *cats, "Average", *tasks]
    lines = [f"## Downstream accuracy ({metric}, %, mean ± {exp.confidence:.0%} CI over seeds)", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, res in have.items():
        def cell(get):
            vals = [v for v in (get(r) for r in res) if v is not None]
            return _fmt(*mean_ci(vals, exp.confidence), scale=100, digits=1) if vals else "-"
        cells = [cell(lambda r, c=c: r["categories"].get(c, {}).get(metric)) for c in cats]
        cells.append(cell(lambda r: r["average"].get(metric)))
        cells += [cell(lambda r, t=t: (r["tasks"].get(t) or {}).get(metric)) for t in tasks]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return lines + [""]


def truth_agreement_rows(exp: ExperimentConfig, runs: dict) -> list[str]:
    """On the synthetic world: Spearman of each agent's final weights against the world's true utilities."""
    from thresher.experiments.demo import agreement_with_truth

    gt_path = Path(exp.out) / "world" / "world" / "ground_truth.json"
    if not exp.synthetic_docs or not gt_path.exists():
        return []
    gt = read_json(gt_path)
    rows = [(name, seed, agreement_with_truth(Path(r["dir"]), gt)) for name, seeds in runs.items()
            for seed, r in sorted(seeds.items())]
    rows = [(n, s, a) for n, s, a in rows if a]
    if not rows:
        return []
    agents = list(dict.fromkeys(k for _, _, a in rows for k in a))
    lines = ["## Learned agent weights vs the synthetic world's truth (Spearman)", "",
             "| policy | seed | " + " | ".join(agents) + " |", "|---|---:|" + "---:|" * len(agents)]
    lines += [f"| {n} | {s} | " + " | ".join(f"{a[k]:.3f}" if k in a else "-" for k in agents) + " |"
              for n, s, a in rows]
    return lines + [""]


def compute_rows(runs: dict) -> list[str]:
    """Selection against training, per policy (means over seeds)."""
    from thresher.evaluate.report import COMPUTE_NOTE

    lines = ["## Compute: selection against training (mean over seeds)", "",
             "| policy | train s | selection s | selection/train time | selection/train FLOPs |",
             "|---|---:|---:|---:|---:|"]
    for name, seeds in runs.items():
        s = [r["summary"] for r in seeds.values()]
        avg = {k: sum(float(x.get(k) or 0.0) for x in s) / len(s)
               for k in ("train_seconds", "selection_seconds", "train_flops", "selection_flops")}
        ts, ss, tf, sf = avg["train_seconds"], avg["selection_seconds"], avg["train_flops"], avg["selection_flops"]
        lines.append(f"| {name} | {ts:.1f} | {ss:.1f} | {ss / ts if ts else 0:.1%} | {sf / tf if tf else 0:.1%} |")
    return lines + ["", COMPUTE_NOTE, ""]


def plot_curves(runs: dict, path: Path) -> None:
    """Figure 4: mean reference loss over tokens trained, mean over seeds, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from thresher.evaluate.report import _savefig

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, seeds in runs.items():
        # over tokens trained, not steps: a variant with another batch or step count lines up by data seen
        curves = [(r["curve_tokens"], r["curve"][1]) for r in seeds.values()
                  if r["curve"][0] and None not in r.get("curve_tokens", [None])]
        if not curves:
            continue
        xs = sorted(set.intersection(*(set(c[0]) for c in curves)))
        ys = [sum(dict(zip(*c))[x] for c in curves) / len(curves) for x in xs]
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    ax.set_xlabel("tokens trained")
    ax.set_ylabel("reference loss (mean over tasks and seeds)")
    ax.legend(fontsize=7)
    _savefig(fig, path)
    plt.close(fig)


def plot_influence_by_category(log: list[dict], path: Path) -> bool:
    """Figures 8-10: each agent's per-category mean reward (Eq. 4) at every update."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from thresher.evaluate.report import _named, _savefig

    series: dict = {}
    for row in log:
        for up in row.get("agents") or []:
            rewards = up.get("mean_rewards")
            if not rewards or len(rewards) > 64:
                continue
            for cat, r in _named(rewards, up.get("categories")).items():
                steps, vals = series.setdefault(up["agent"], {}).setdefault(cat, ([], []))
                steps.append(int(row["step"]))
                vals.append(r)
    if not series:
        return False
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.8), squeeze=False)
    for ax, (agent, cats) in zip(axes[0], series.items()):
        for cat, (steps, vals) in cats.items():
            ax.plot(steps, vals, marker=".", label=cat)
        ax.set_title(f"{agent}: mean reward per category")
        ax.set_xlabel("step")
        ax.legend(fontsize=6, ncol=2)
    _savefig(fig, path)
    plt.close(fig)
    return True


def write_results(exp: ExperimentConfig) -> Path:
    """results.md, results.json and the plots, from the finished runs' files alone."""
    from thresher.evaluate.config import EvalConfig
    from thresher.evaluate.report import plot_agent_weights, read_jsonl
    from thresher.utils.io import atomic_write_text

    out = Path(exp.out)
    runs = collect(exp)
    lines = ["# thresher experiment", "",
             f"Final reference loss (mean NLL per continuation token on the held-out halves; lower is better), "
             f"mean ± {exp.confidence:.0%} Student-t interval over seeds. Δ: the mean of the per-seed differences "
             f"to {exp.baseline} ± their {exp.confidence:.0%} paired Student-t interval (an interval that excludes 0 "
             f"is a significant difference at that level). `*`: the difference to {exp.baseline} "
             f"is larger than both policies' seed ranges (max - min over seeds).", ""]
    table, numbers = ref_table(exp, runs) if runs else ([], {})
    lines += table + [""]
    equal, equal_numbers = equal_tokens_rows(exp, runs) if runs else ([], {})
    lines += equal
    held, held_numbers = heldout_rows(exp, runs) if runs else ([], {})
    lines += held
    if runs:
        plot_curves(runs, out / "curves.png")
        lines += ["![reference loss over training](curves.png)", ""]
    lines += downstream_table(exp, runs, from_dict(EvalConfig, dict(exp.eval), "experiment.eval").metric)
    lines += truth_agreement_rows(exp, runs)
    lines += compute_rows(runs) if runs else []
    for name, seeds in runs.items():
        log = read_jsonl(Path(seeds[min(seeds)]["dir"]) / "selector_log.jsonl")
        if plot_agent_weights(log, out / f"weights_{name}.png"):
            lines += [f"## {name}: agent weights and theta (seed {min(seeds)})", "", f"![](weights_{name}.png)", ""]
        if plot_influence_by_category(log, out / f"influence_{name}.png"):
            lines += [f"## {name}: influence per category over training (seed {min(seeds)})", "",
                      f"![](influence_{name}.png)", ""]
    missing = [f"{n}/seed{s}" for n in exp.policies for s in exp.seeds if s not in runs.get(n, {})]
    if missing:
        lines += ["Not finished yet: " + ", ".join(missing), ""]
    kept = ("dir", "ref", "heldout", "tokens", "summary", "curve", "curve_tokens", "downstream")
    atomic_write_json(out / "results.json", {"reference_loss": numbers, "equal_tokens": equal_numbers,
                                             "heldout_loss": held_numbers, "runs": {
        n: {str(s): {k: r[k] for k in kept if k in r} for s, r in seeds.items()} for n, seeds in runs.items()}})
    path = out / "results.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
