"""The demo end to end on a small world: a report is written and multi-agent beats random."""

import json
import subprocess
import sys
from pathlib import Path

from process_helpers import child_env
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


KILLED_DEMO = """
import json, os, signal, sys
import thresher.experiments.run as run_module
from thresher.experiments.demo import DemoConfig, run_demo
from thresher.train.callbacks import Callback
class Kill(Callback):  # kill -9 in the middle of the multi-agent run (after its step-12 checkpoint and update)
    def on_step_end(self, run, metrics):
        if run.step == 18 and run.out_dir.name == "multi-agent":
            os.kill(os.getpid(), signal.SIGKILL)
real = run_module.run
run_module.run = lambda cfg, resume=False, callbacks=(): real(cfg, resume, [*callbacks, Kill()])
run_demo(DemoConfig(**json.loads(sys.argv[1])), sys.argv[2])
"""


def _timeless(out: Path) -> dict:
    """What a demo in ``out`` reports, less its wall times (a rerun measures only what it ran): report.md without
    the wall-time section and the compute table's seconds, each run's summary.json, losses, selector log and model."""
    report = (out / "report.md").read_text().replace(str(out), "OUT")
    sections = {s.split("\n")[0]: s for s in report.split("\n## ")}
    del sections[next(k for k in sections if k.startswith("Wall time"))]
    compute = next(k for k in sections if k.startswith("Compute"))
    sections[compute] = "\n".join("|".join(c if i not in (2, 3, 4) else "s" for i, c in enumerate(ln.split("|")))
                                  for ln in sections[compute].split("\n"))
    runs = {}
    for run in sorted((out / "runs").iterdir()):
        summary = json.loads((run / "summary.json").read_text())
        assert summary["model_dir"] == str(run / "final") and summary["out_dir"] == str(run)
        runs[run.name] = ({k: v for k, v in summary.items() if not k.endswith(("_seconds", "_dir"))},
                          [(r["step"], r["loss"]) for r in read_jsonl(run / "metrics.jsonl") if "loss" in r],
                          read_jsonl(run / "selector_log.jsonl"), (run / "final" / "model.safetensors").read_bytes())
    return {"report": sections, "runs": runs}


def test_a_demo_killed_mid_training_reruns_to_the_uninterrupted_demo(tmp_path):
    """kill -9 of `thresher demo` mid-way through its second policy's training (random finished, multi-agent past
    its step-12 checkpoint and update); the same demo rerun keeps random, resumes multi-agent and reports what an
    uninterrupted demo reports, wall times aside: every loss, selection, model weight and summary number."""
    import dataclasses

    cfg = DemoConfig(n_docs=2500, seed=3, steps=24, update_every=12, samples_per_category=8)
    env = child_env()  # this process's thread count: bit-equal floats
    args = json.dumps(dataclasses.asdict(cfg))
    r = subprocess.run([sys.executable, "-c", KILLED_DEMO, args, str(tmp_path / "killed")], env=env)
    assert r.returncode == -9
    assert (tmp_path / "killed/runs/random/summary.json").is_file() and not (tmp_path / "killed/report.md").exists()
    assert [r["step"] for r in read_jsonl(tmp_path / "killed/runs/multi-agent/selector_log.jsonl")] == [0, 12]
    random_model = (tmp_path / "killed/runs/random/final/model.safetensors").stat().st_mtime_ns
    run_demo(cfg, tmp_path / "killed")
    assert (tmp_path / "killed/runs/random/final/model.safetensors").stat().st_mtime_ns == random_model  # kept
    run_demo(cfg, tmp_path / "full")
    killed, full = _timeless(tmp_path / "killed"), _timeless(tmp_path / "full")
    assert killed["runs"] == full["runs"]
    assert killed["report"] == full["report"]
    assert [r["step"] for r in killed["runs"]["multi-agent"][2]] == [0, 12]  # the step-12 update redone once
