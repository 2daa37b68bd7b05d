"""benchmarks/gpu_check.py keeps working: its --tiny mode runs every part on CPU (tiny models, few steps).

The GPU run itself cannot happen here; this keeps the prepared script from rotting until a GPU runs it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _module(name: str):
    if str(BENCHMARKS) not in sys.path:  # the scripts import their siblings, as when run from benchmarks/
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_check_tiny_runs_every_part_on_cpu(tmp_path, shared_data):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--tiny", "--out", str(out), "--work", str(tmp_path / "w"),
         "--data-dir", str(shared_data), "--dist-timeout", "3600"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    parts = json.loads((out / "gpu_check.json").read_text())["parts"]
    assert {key: part["status"] for key, part in parts.items()} == {"a": "ok", "b": "ok", "c": "ok", "d": "ok"}

    smoke = {s["step"]: s["result"] for s in parts["a"]["steps"]}
    assert smoke.pop("train, fp16 + GradScaler") == "skipped"  # fp16 autocast needs CUDA
    assert len(smoke) == 6 and set(smoke.values()) == {"ok"}
    assert sorted(parts["b"]["scores"]) == sorted(_module("gpu_check").CPU_DEFAULT)  # the nine benchmarks
    models = parts["c"]["models"]
    assert [m["model"] for m in models] == ["MiniCPM-2B", "Phi-2", "Gemma-2B"]
    for m in models:
        assert [(c["case"].split(" (")[0], c["batch"]) for c in m["cases"]] == [
            ("embedtune plain", 4), ("paper protocol", 4), ("embedtune GradCache", 16), ("paper protocol", 16)]
        assert all(c["triplets_per_s"] > 0 for c in m["cases"])
    (rank,) = parts["d"]["ranks"]
    assert parts["d"]["backend"] == "gloo" and len(rank["cases"]) == 3
    assert all(c["equal"] for c in rank["cases"].values())

    md = (out / "gpu_check.md").read_text()
    assert md.startswith("## GPU check\n") and "A `--tiny` run" in md
    for title in ("(a) Smoke", "(b) The default recipe", "(c) The paper's model shapes", "(d) torchrun"):
        assert f"### {title}" in md


def test_splice_replaces_only_its_section(tmp_path):
    splice = _module("gpu_check_report").splice
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## A\n\na\n\n## GPU check\n\nold\n\n### (a) x\n\nold too\n\n## B\n\nb\n")
    splice(doc, "## GPU check", "## GPU check\n\nnew\n")
    assert doc.read_text() == "# Benchmarks\n\n## A\n\na\n\n## GPU check\n\nnew\n\n## B\n\nb\n"
    doc.write_text("# Benchmarks\n\n## A\n\na\n\n## GPU check\n\nold\n")  # the last section
    splice(doc, "## GPU check", "## GPU check\n\nnew\n")
    assert doc.read_text() == "# Benchmarks\n\n## A\n\na\n\n## GPU check\n\nnew\n"
    doc.write_text("# Benchmarks\n\n## A\n\na\n")  # no such section yet: appended
    splice(doc, "## GPU check", "## GPU check\n\nnew\n")
    assert doc.read_text() == "# Benchmarks\n\n## A\n\na\n\n## GPU check\n\nnew\n"
