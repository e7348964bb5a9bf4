"""The ``thresher`` console script: one subcommand per pipeline stage, each calling a plain function.

Imports of heavy modules happen inside the commands so ``thresher --help`` stays instant.
"""

from __future__ import annotations

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
tokenizer_app = typer.Typer(no_args_is_help=True, help="Train or inspect tokenizers.")
quality_app = typer.Typer(no_args_is_help=True, help="Quality classifiers for the quality agent.")
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(quality_app, name="quality")


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

    overrides = list(set_) + [f"seed={seed}"] + ([f"n_docs={n_docs}"] if n_docs else [])
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
    typer.echo(f"token store written to {out}: {stats}")


def main() -> None:
    try:
        app()
    except ThresherError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
