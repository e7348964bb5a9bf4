"""The demo end to end on a small world: a report is written and multi-agent beats random."""

import json
import subprocess
import sys
from pathlib import Path

from thresher.evaluate.report import final_ref_losses, read_jsonl
from thresher.experiments.demo import DemoConfig, run_demo


def small_demo() -> DemoConfig:
    return DemoConfig(n_docs=6000, steps=500, update_every=100, seed=0)


def test_demo_report_and_multi_agent_beats_random(tmp_path):
    report = run_demo(small_demo(), tmp_path)
    text = report.read_text()
    assert "| random |" in text and "| multi-agent |" in text
    assert (tmp_path / "ref_loss.png").stat().st_size > 1000
    assert (tmp_path / "weights_multi-agent.png").stat().st_size > 1000
    finals = {p: final_ref_losses(read_jsonl(tmp_path / "runs" / p / "metrics.jsonl")) for p in ("random", "multi-agent")}
    mean = {p: sum(v.values()) / len(v) for p, v in finals.items()}
    assert set(finals["random"]) == {"synth_cloze", "synth_qa"}
    assert mean["multi-agent"] < mean["random"] - 0.1, mean
    # every agent update is logged with its reward provenance (model step and reference tasks)
    log = read_jsonl(tmp_path / "runs" / "multi-agent" / "selector_log.jsonl")
    updates = [r for r in log if r.get("agents") and r["step"] > 0]
    assert [r["step"] for r in updates] == [100, 200, 300, 400]
    assert [a["agent"] for a in log[0]["agents"]] == ["quality", "domain", "topic"]  # step 0: initial weights
    assert all(len(a["weights"]) == len(a["categories"]) for a in log[0]["agents"])
    assert all(r["rewards"]["step"] == r["step"] for r in updates)
    # a rerun skips every finished stage and gives the same report numbers
    again = run_demo(small_demo(), tmp_path)
    assert again.read_text().split("## Compute")[0] == text.split("## Compute")[0]


def test_cli_error_is_one_line_without_traceback(tmp_path):
    exe = Path(sys.executable).with_name("thresher")
    r = subprocess.run([str(exe), "ingest", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "s"),
                        "--tokenizer", str(tmp_path / "tok.json")], capture_output=True, text=True)
    assert r.returncode != 0
    assert r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
