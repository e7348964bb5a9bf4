"""Settings of corpus ingestion: one dataclass, plain fields, round-trips to TOML."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class IngestConfig:
    inputs: list = field(default_factory=list)  # files, folders or globs of .jsonl[.gz|.zst] / .parquet shards
    out_dir: str = ""  # token store folder
    tokenizer: str = ""  # tokenizer.json path, a folder holding one, or a Hub id
    text_field: str = "text"  # dotted path allowed
    field_map: dict = field(default_factory=dict)  # output column -> dotted source path
    workers: int = 2  # worker processes, one shard each at a time
    batch_size: int = 1000  # documents per encode_batch call
    resume: bool = True  # skip shards a previous run finished (same tokenizer and mapping only)
    keep_parts: bool = False  # keep out_dir/parts/ after the merge (doubles disk use)
    # used only when `tokenizer` is empty: train byte-level BPE into out_dir/tokenizer.train.json first
    train_vocab_size: int = 8192
    train_sample_docs: int = 50_000  # documents the tokenizer is trained on

    def run(self) -> dict:
        """Train a tokenizer if none is named, then ingest; returns the ingest stats."""
        from pathlib import Path

        from thresher.corpus.ingest import ingest
        from thresher.corpus.tokenizer import train_tokenizer
        from thresher.utils.errors import ThresherError

        if not self.inputs or not self.out_dir:
            raise ThresherError("ingest needs inputs and out_dir")
        tok = self.tokenizer
        if not tok:
            tok = str(Path(self.out_dir) / "tokenizer.train.json")
            if not Path(tok).is_file():
                train_tokenizer(self.inputs, tok, self.train_vocab_size, self.text_field,
                                self.train_sample_docs, self.field_map)
        return ingest(self.inputs, self.out_dir, tok, text_field=self.text_field, field_map=self.field_map,
                      workers=self.workers, batch_size=self.batch_size, resume=self.resume,
                      keep_parts=self.keep_parts)
