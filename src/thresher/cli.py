"""The ``thresher`` console script: one subcommand per pipeline stage, each calling a plain function.

Imports of heavy modules happen inside the commands so ``thresher --help`` stays instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from thresher.utils.errors import ThresherError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Select LLM pretraining data while the model trains (multi-agent collaborative selection, Quad).",
)
tokenizer_app = typer.Typer(no_args_is_help=True, help="Train a byte-level BPE tokenizer.")
quality_app = typer.Typer(no_args_is_help=True, help="Quality classifiers for the quality agent.")
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(quality_app, name="quality")
cache_app = typer.Typer(no_args_is_help=True, help="The selectors' cell index caches (data.cell_index_cache).")
app.add_typer(cache_app, name="cache")


def _overrides(set_: list[str], lists: dict | None = None, scalars: dict | None = None) -> list[str]:
    """``--set`` items plus typed CLI options, as ``key=value`` config overrides (values as TOML)."""
    out = list(set_)
    for key, csv in (lists or {}).items():
        if csv is not None:  # an empty --labelers "" is an empty list (an error where one is needed), not the default
            out.append(f"{key}=" + json.dumps([x.strip() for x in csv.split(",") if x.strip()]))
    for key, value in (scalars or {}).items():
        if value is not None:
            out.append(f"{key}={json.dumps(value)}")
    return out


def _parse_map(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ThresherError(f"--map '{item}' must look like column=source.path")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write the synthetic world to (corpus shards, tokenizer, "
                               "reference tasks, ground truth)."),
    seed: int = typer.Option(0, help="Seed: the same seed gives byte-identical files."),
    n_docs: Optional[int] = typer.Option(None, help="Number of documents (default: the SynthConfig default)."),
    config: Optional[Path] = typer.Option(None, help="A TOML file with SynthConfig fields."),
    set_: List[str] = typer.Option([], "--set", help="Override a SynthConfig field: key=value (repeatable)."),
):
    """Generate the built-in synthetic world: a multi-domain corpus where the right selection is known."""
    from thresher.corpus.synth import generate
    from thresher.corpus.synth_config import SynthConfig
    from thresher.utils.tomlio import load_config

    overrides = _overrides(set_, scalars={"seed": seed, "n_docs": n_docs})
    cfg = load_config(SynthConfig, config, overrides)
    info = generate(cfg, out)
    typer.echo(f"synthetic world written to {out}: {info}")


@tokenizer_app.command("train")
def tokenizer_train(
    inputs: List[str] = typer.Argument(..., help="JSONL (.jsonl, .gz, .zst) / Parquet files, folders or globs."),
    out: Path = typer.Option(..., help="Where to write tokenizer.json."),
    vocab_size: int = typer.Option(8192, help="Byte-level BPE vocabulary size."),
    text_field: str = typer.Option("text", help="Field holding the document text."),
    sample_docs: int = typer.Option(50_000, help="Train on at most this many documents (a sample)."),
):
    """Train a byte-level BPE tokenizer on a sample of the corpus."""
    from thresher.corpus.tokenizer import train_tokenizer

    path = train_tokenizer(inputs, out, vocab_size=vocab_size, text_field=text_field, sample_docs=sample_docs)
    typer.echo(f"tokenizer written to {path}")


@app.command()
def ingest(
    inputs: List[str] = typer.Argument(..., help="JSONL (.jsonl, .gz, .zst) / Parquet shards, folders or globs."),
    out: Path = typer.Option(..., help="Token store folder to create (or resume)."),
    tokenizer: str = typer.Option(..., help="tokenizer.json path, a folder holding one, or a Hub id."),
    text_field: str = typer.Option("text", help="Field holding the document text."),
    map_: List[str] = typer.Option([], "--map", help="Metadata column mapping column=source.path, e.g. "
                                   "domain=meta.redpajama_set_name (repeatable)."),
    workers: int = typer.Option(2, help="Parallel worker processes (one input shard each at a time)."),
    batch_size: int = typer.Option(1000, help="Documents per tokenizer batch."),
    resume: bool = typer.Option(True, help="Skip input shards a previous run finished."),
):
    """Tokenize a corpus into a token store (memory-mapped tokens, offsets, a Parquet document table)."""
    from thresher.corpus.ingest import ingest as run_ingest

    stats = run_ingest(inputs, out, tokenizer, text_field=text_field, field_map=_parse_map(map_),
                       workers=workers, batch_size=batch_size, resume=resume)
    typer.echo(f"token store {out}: {stats}")


eval_app = typer.Typer(no_args_is_help=True, help="Evaluate checkpoints: downstream tasks via lm-evaluation-harness.")
app.add_typer(eval_app, name="eval")


@app.command()
def label(
    store: Path = typer.Argument(..., help="Token store folder (from `thresher ingest`)."),
    out: Path = typer.Option(..., help="Label table folder to create, resume or extend with new columns."),
    config: Optional[Path] = typer.Option(None, help="A TOML file with LabelConfig fields."),
    labelers: Optional[str] = typer.Option(None, help="Comma-separated labelers: domain, quality_hf, "
                                           "quality_fasttext, quality_rules, topic_hf, topic_zeroshot, embed, "
                                           "perplexity, dsir, synthetic."),
    executor: Optional[str] = typer.Option(None, help="local (processes on this machine; default) or ray (Ray Data)."),
    workers: Optional[int] = typer.Option(None, help="Local worker processes (default 1)."),
    kmeans_k: Optional[int] = typer.Option(None, help="k-means clusters over the embeddings (default 0 = none)."),
    quality_bins: Optional[int] = typer.Option(None, help="Also write quality_bin: this many equal-count bins of the "
                                               "pool's quality scores (default 0 = none), for a quality agent "
                                               "when the scores crowd into one Eq. 3 interval (quality_rules)."),
    domain_names: Optional[str] = typer.Option(None, help="The domain labeler's categories, comma-separated, matched "
                                               "case-insensitively against the store's `domain` field (e.g. The "
                                               "Pile's set names), or 'auto' (the field's distinct values, most "
                                               "frequent first). Default: SlimPajama's 7 domains."),
    replace: bool = typer.Option(False, "--replace", help="Recompute columns the table already has under other "
                                 "settings (e.g. domain after --domain-names) instead of refusing; other columns stay."),
    set_: List[str] = typer.Option([], "--set", help="Override a LabelConfig field: key=value (repeatable), e.g. "
                                   "shard_size=1000 (default 10000 docs; progress and resume are per shard)."),
):
    """Label every document (domain, quality, topic, embedding, cluster...) into the agents' label table.

    Model-based labelers are slow on CPU (topic_zeroshot + embed: about 5 docs/s on 2 cores):
    --set shard_size=1000 shows progress sooner; label a whole pool on a GPU or with Ray."""
    from thresher.labels.base import TokenStoreSource
    from thresher.labels.config import LabelConfig, run_from_config
    from thresher.utils.tomlio import load_config

    overrides = _overrides(set_, {"labelers": labelers, "domain_names": domain_names},
                           {"executor": executor, "workers": workers, "kmeans_k": kmeans_k, "quality_bins": quality_bins,
                            "replace": True if replace else None})
    cfg = load_config(LabelConfig, config, overrides)
    table = run_from_config(TokenStoreSource(store), cfg, out)
    typer.echo(f"label table {out}: {table.n_docs} documents, columns {table.columns}")


@app.command()
def stats(
    labels: Path = typer.Argument(..., help="Label table folder (from `thresher label`)."),
    out: Path = typer.Option(..., help="Folder for figure1.png, heatmaps and stats.md."),
    quality: str = typer.Option("quality_interval", help="The quality category column: quality_interval (Eq. 3) "
                                "or quality_bin (thresher label --quality-bins)."),
):
    """Joint label distributions (quality x domain x topic diversity, the papers' Figure 1) as PNG + Markdown."""
    from thresher.labels.stats import label_stats

    paths = label_stats(labels, out, interval=quality)
    typer.echo("\n".join(f"{k}: {v}" for k, v in paths.items()))
    if "figure1" not in paths:
        typer.echo(f"figure1: not written (it needs {quality}, domain and topic columns; "
                   "stats.md says which is missing)")


@quality_app.command("train")
def quality_train(
    pos: Path = typer.Option(..., help="Text file of high-quality examples, one document per line."),
    neg: Path = typer.Option(..., help="Text file of low-quality examples, one document per line."),
    out: Path = typer.Option(..., help="Where to write the fastText model (.bin)."),
    epoch: int = typer.Option(5, help="Training epochs."),
    threads: int = typer.Option(1, help="fastText threads (1 keeps training deterministic)."),
    seed: int = typer.Option(0, help="Seed."),
):
    """Train a DCLM-style fastText quality classifier from positive and negative examples."""
    from thresher.labels.quality import train_quality_fasttext

    typer.echo(f"quality classifier written to {train_quality_fasttext(pos, neg, out, epoch=epoch, threads=threads, seed=seed)}")


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, help="Run config TOML (sections data, selector, influence, train)."),
    set_: List[str] = typer.Option([], "--set", help="Override any field: section.key=value, e.g. "
                                   "train.steps=200 or selector.policy=quad (repeatable)."),
    resume: bool = typer.Option(False, help="Continue from the newest checkpoint in the run's out folder."),
):
    """Train a model while a selection policy re-chooses its data (Algorithm 1); resumable. A finished run
    writes summary.json (final losses, train and selection seconds and FLOPs) for `thresher report`."""
    import time

    from thresher.config import check_run_inputs, load_run_config
    from thresher.experiments.run import run, write_summary

    cfg = load_run_config(config, list(set_))
    check_run_inputs(cfg)  # before run() creates the out folder
    t = time.perf_counter()
    summary = run(cfg, resume=resume)
    if summary.get("finished"):
        write_summary(cfg.out, summary, time.perf_counter() - t)
    typer.echo(f"finished at step {summary.get('step')}; reference losses: {summary.get('ref_losses')}")


def _run_store(checkpoint: Path, store: Optional[Path]):
    """The token store of the run that wrote ``checkpoint``: ``store``, else the one its config.toml names."""
    from thresher.config import load_run_config
    from thresher.corpus.store import TokenStore
    from thresher.train.checkpoint import require_checkpoint

    require_checkpoint(checkpoint)  # before looking for the run's store beside it
    if store is None:
        config = checkpoint.parent.parent / "config.toml"
        if not config.is_file():
            raise ThresherError(f"no config.toml in {checkpoint.parent.parent} names the run's token store: "
                                "give --store")
        store = Path(load_run_config(config).data.store)
        if not (store / "store.json").is_file():
            raise ThresherError(f"no token store at {store}, the data.store that {config} names (its paths are "
                                "relative to the directory the run was started in): run from there or give --store")
    return TokenStore.open(store)


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="A training checkpoint: <run>/checkpoints/step_NNNNNN."),
    out: Path = typer.Option(..., help="Folder to write the Hugging Face model (weights, config, tokenizer) to."),
    store: Optional[Path] = typer.Option(None, help="The run's token store (default: the one the run's "
                                         "config.toml names)."),
):
    """A training checkpoint as a Hugging Face model folder, like the final/ a finished run writes (for
    downstream evaluation of intermediate steps)."""
    from thresher.train.checkpoint import export_checkpoint

    typer.echo(f"exported to {export_checkpoint(checkpoint, out, _run_store(checkpoint, store))}")


@eval_app.command("downstream")
def eval_downstream(
    model_dir: Path = typer.Argument(..., help="A Hugging Face model folder (a run's final/), or a training "
                                     "checkpoint (<run>/checkpoints/step_*: exported to <out>/model first)."),
    out: Path = typer.Option(..., help="Folder for downstream_results.json."),
    config: Optional[Path] = typer.Option(None, help="A TOML file with EvalConfig fields."),
    tasks: Optional[str] = typer.Option(None, help="Comma-separated tasks (default: the paper's set)."),
    limit: Optional[int] = typer.Option(None, help="At most this many documents per task, per subject for "
                                        "MMLU (57 x as many) (0 = all)."),
    data_root: Optional[str] = typer.Option(None, help="Folder holding the benchmarks (shared/data/eval layout)."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda."),
    set_: List[str] = typer.Option([], "--set", help="Override an EvalConfig field: key=value (repeatable)."),
):
    """Downstream accuracy (0/3/5-shot, acc and acc_norm) with lm-evaluation-harness on local task files."""
    from thresher.evaluate.config import EvalConfig, run_eval
    from thresher.evaluate.downstream import results_table_markdown
    from thresher.utils.tomlio import load_config

    overrides = _overrides(set_, {"tasks": tasks}, {"limit": limit, "data_root": data_root, "device": device})
    cfg = load_config(EvalConfig, config, overrides)
    given = str(model_dir)  # the table's row: the checkpoint asked for, not its exported copy <out>/model
    if (model_dir / "trainer.pt").is_file() and not (model_dir / "config.json").is_file():
        from thresher.train.checkpoint import export_checkpoint

        model_dir = export_checkpoint(model_dir, out / "model", _run_store(model_dir, None))
        typer.echo(f"checkpoint exported to {model_dir}")
    results = run_eval(cfg, model_dir, out)
    typer.echo(results_table_markdown({given: results}, cfg.metric))


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), help="Folder for the world, store, labels, runs and report."),
    seed: int = typer.Option(0, help="Seed of the world, the selection and the models."),
    steps: Optional[int] = typer.Option(None, help="Training steps per policy (default: the demo's)."),
    policies: str = typer.Option("random,multi-agent", help="Comma-separated policies to compare."),
    projection: str = typer.Option("none", help="Influence gradient projection: gaussian, rademacher, "
                                   "or none (exact rewards)."),
):
    """The whole pipeline on the built-in synthetic world, on CPU, in minutes: synth -> ingest -> labels ->
    train under each policy -> report (Markdown + PNG)."""
    from thresher.experiments.demo import DemoConfig, run_demo

    cfg = DemoConfig(seed=seed, policies=[p.strip() for p in policies.split(",") if p.strip()], projection=projection)
    if steps is not None:
        cfg.steps = steps
    report = run_demo(cfg, out)
    typer.echo(f"report: {report}")


@app.command()
def experiment(
    config: Path = typer.Argument(..., help="Experiment TOML: an \\[experiment] table + the base run config."),
    set_: List[str] = typer.Option([], "--set", help="Override any field, e.g. experiment.seeds=[0,1,2] or "
                                   "train.steps=200 (repeatable)."),
    only: Optional[str] = typer.Option(None, help="Comma-separated policies to run now (default: all)."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds to run now (default: the config's)."),
    report_only: bool = typer.Option(False, help="Rebuild results.md from finished runs; train nothing."),
):
    """Compare policies x seeds on one pool: resumable run by run, then a results table with confidence
    intervals, curves, agent weights, influence per category and selection compute."""
    from thresher.experiments.experiment import load_experiment, report_only as write_report, run_config_for, run_experiment

    from thresher.config import check_run_inputs

    exp, base = load_experiment(config, list(set_))
    if report_only:
        typer.echo(f"results: {write_report(exp, base)}")
        return
    if seeds:  # run a subset now (e.g. one process per seed); the table still covers experiment.seeds
        try:
            picked = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise ThresherError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. --seeds 0,1") from None
        unknown = sorted(set(picked) - set(exp.seeds))
        if unknown:
            raise ThresherError(f"--seeds {unknown} are not in experiment.seeds {exp.seeds}")
    else:
        picked = None
    only_list = [p.strip() for p in only.split(",") if p.strip()] if only else None
    # their store, labels and reference files exist, before any folder is made (a synthetic experiment builds
    # its own under experiment.out: run_experiment points [data] at them)
    for name in (only_list or exp.policies) if not exp.synthetic_docs else ():
        if name in exp.policies:
            check_run_inputs(run_config_for(exp, base, name, exp.seeds[0]))
    typer.echo(f"results: {run_experiment(exp, base, only=only_list, seeds=picked)}")


@app.command()
def regmix(
    config: Optional[Path] = typer.Option(None, help="Base run config TOML (data, selector, influence, train), "
                                          "optionally with a \\[regmix] table of RegMixConfig fields."),
    column: Optional[str] = typer.Option(None, help="Agent label whose categories are mixed (a key of "
                                         "data.label_columns, e.g. domain or topic). Default: domain."),
    out: Optional[Path] = typer.Option(None, help="Folder for proxies/, init_<column>.json, regmix.json, results.md."),
    proxies: Optional[int] = typer.Option(None, help="Number of proxy runs (default 64; the paper: 512)."),
    steps: Optional[int] = typer.Option(None, help="Training steps per proxy (default 300)."),
    set_: List[str] = typer.Option([], "--set", help="Override any field: regmix.key=value (e.g. regmix.top_k=50, "
                                   "regmix.regressor=linear) or section.key=value of the run config (repeatable)."),
):
    """Initial agent weights from RegMix: proxy runs on random mixtures of one label column, a LightGBM fit from
    mixture to reference loss, the mixture it predicts best; writes a selector.init_file. Resumable."""
    from thresher.config import check_run_inputs
    from thresher.experiments.regmix import load_regmix, proxy_config, run_regmix

    overrides = _overrides(set_, scalars={"regmix.column": column, "regmix.out": str(out) if out else None,
                                          "regmix.n_proxies": proxies, "regmix.steps": steps})
    cfg, base = load_regmix(config, overrides)
    check_run_inputs(proxy_config(base, cfg, 0, {}))  # what the proxies run (their model, their policy's labels)
    result = run_regmix(cfg, base)
    path = Path(cfg.out) / f"init_{cfg.column}.json"
    typer.echo(f"weights: {json.dumps({k: round(v, 4) for k, v in result['weights'].items()})}")
    typer.echo(f"init file: {path} (use --set selector.init_file={path}; with another column's fit: "
               f"--set selector.init_file={path},<its init file>)")


@app.command()
def report(
    runs: List[Path] = typer.Argument(..., help="Run folders (each a `thresher train` out folder), e.g. one per policy."),
    out: Path = typer.Option(..., help="Folder for report.md and its PNG plots."),
    title: str = typer.Option("thresher report", help="The report's title."),
):
    """Compare runs side by side: final reference (and held-out) losses, loss curves, selection compute against
    training (finished runs), agent weights and theta over training. Runs still training show what they have."""
    from thresher.evaluate.report import run_labels, write_report

    path = write_report(out, run_labels(runs), title)
    typer.echo(f"report: {path}")


@app.command()
def trace(
    run_dir: Path = typer.Argument(..., help="A run folder (the `out` of thresher train)."),
    docs: List[int] = typer.Argument(..., help="Doc ids: rows of the token store and the label table."),
    labels: Optional[Path] = typer.Option(None, help="The run's label table (default: the one its config.toml names)."),
    store: Optional[Path] = typer.Option(None, help="The run's token store, read only for a run with held-out "
                                         "documents (data.heldout_docs; default: the one its config.toml names)."),
    json_: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    verify: bool = typer.Option(False, help="Check each saved D_k against its log entry's SHA-1 (reads every id; "
                                             "without it, only the number of ids is checked)."),
):
    """Per stage, whether each document was in D_k, with its labels and (console policies) the theta, agent weights
    and reward provenance that scored it. Reads the run's selections/ (selector.save_selections)."""
    from thresher.evaluate.trace import render, trace as trace_docs

    traces = trace_docs(run_dir, docs, labels, store, verify=verify)
    typer.echo(json.dumps(traces, indent=1) if json_ else render(traces))


@app.command()
def selection(
    run_dir: Path = typer.Argument(..., help="A run folder (the `out` of thresher train)."),
    out: Path = typer.Option(..., help="Folder to write step_NNNNNN.parquet to, one file per exported stage."),
    stages: str = typer.Option("last", help="last (the run's final D_k), all, or comma-separated steps (0,100)."),
    text: bool = typer.Option(False, help="Also write each document's text, decoded from the token store."),
    labels: Optional[Path] = typer.Option(None, help="The run's label table (default: the one its config.toml "
                                          "names)."),
    no_labels: bool = typer.Option(False, "--no-labels", help="Leave the label table's columns out."),
    store: Optional[Path] = typer.Option(None, help="The run's token store (default: the one its config.toml "
                                         "names)."),
):
    """A run's selected data as Parquet: per stage, one row per document of D_k with where it came from
    (source shard, row, id), its labels and optionally its text. Reads the run's selections/; a rerun skips the
    stages already written."""
    from thresher.evaluate.selection import export_selection

    for r in export_selection(run_dir, out, stages, text, labels, store, with_labels=not no_labels):
        how = "already there" if r["skipped"] else "written"
        typer.echo(f"step {r['step']}: {r['rows']:,} documents, {r['tokens']:,} tokens -> {r['file']} ({how})")


def _cache_dir(path: Path) -> Path:
    """``path`` itself, or its ``cache`` folder when given the label table's folder (the default cache)."""
    if not path.is_dir():
        raise ThresherError(f"{path} is not a folder")
    if not any(path.glob("cells-*")) and (path / "cache").is_dir():
        return path / "cache"
    return path


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


@cache_app.command("list")
def cache_list(
    path: Path = typer.Argument(..., help="A cache folder, or a label table's folder (its cache/ is the default)."),
):
    """List the cell index folders: size, documents, label columns and when a run last used each."""
    import time

    from thresher.agents.cells import list_cell_caches

    entries = list_cell_caches(_cache_dir(path))
    for e in entries:
        docs = f"{e.n_docs:,} docs" if e.n_docs is not None else "incomplete"
        days = (time.time() - e.last_used) / 86400
        typer.echo(f"{e.path.name}  {_size(e.bytes):>9}  {docs}  [{','.join(e.columns)}]  "
                   f"last used {days:.1f} days ago")
    typer.echo(f"{len(entries)} cell index folders, {_size(sum(e.bytes for e in entries))}")


@cache_app.command("prune")
def cache_prune(
    path: Path = typer.Argument(..., help="A cache folder, or a label table's folder (its cache/ is the default)."),
    unused_days: float = typer.Option(30.0, help="Delete folders no run has used (loaded, or updated its "
                                      "selection with) for this many days."),
    dry_run: bool = typer.Option(False, help="Only list what would be deleted."),
):
    """Delete cell index folders that no run has used for --unused-days (a run that needs one rebuilds it)."""
    from thresher.agents.cells import prune_cell_caches

    gone = prune_cell_caches(_cache_dir(path), unused_days, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    for e in gone:
        typer.echo(f"{verb} {e.path} ({_size(e.bytes)})")
    typer.echo(f"{verb} {len(gone)} cell index folders, {_size(sum(e.bytes for e in gone))}")


# what to tell after Ctrl-C, per command that resumes
_RESUME_HINTS = {"train": "rerun with --resume to continue", "experiment": "rerun the same command to continue",
                 "demo": "rerun the same command to continue", "ingest": "rerun the same command to continue",
                 "regmix": "rerun the same command to continue"}


def _interrupted() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    hint = _RESUME_HINTS.get(command)
    print(f"interrupted: {hint}" if hint else "interrupted", file=sys.stderr)
    sys.exit(130)


def main() -> None:
    try:
        app()
    except ThresherError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except OSError as e:  # the file system said no (permissions, a full disk, a vanished file): one line
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        sys.exit(2)
    except SystemExit as e:
        if e.code == 130:  # typer turns Ctrl-C inside a command into a silent exit 130
            _interrupted()
        raise


if __name__ == "__main__":
    main()
