"""benchmarks/tradeoff.py says what disturbed its timings: the host's steal and other work on the cores."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import tradeoff  # noqa: E402


def test_steal_ticks_are_read_from_the_aggregate_cpu_line(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 0 20 600 10 0 5 65 0 0\ncpu0 50 0 10 300 5 0 2 30 0 0\n")
    assert tradeoff.cpu_steal_ticks(stat) == (65, 800)
    stat.write_text("cpu  100 0 20 600\n")  # an old kernel without the steal column
    assert tradeoff.cpu_steal_ticks(stat) == (0, 720)
    assert tradeoff.cpu_steal_ticks(tmp_path / "missing") is None


@pytest.mark.parametrize(("load", "says"), [(2.1, "about the benchmark's own threads"),
                                            (3.8, "above the core count: other work shared the cores")])
def test_machine_line_blames_other_work_only_above_the_benchmarks_own_load(monkeypatch, load, says):
    monkeypatch.setattr(tradeoff.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(tradeoff.os, "getloadavg", lambda: (load, 0.0, 0.0))
    line = tradeoff.machine_line("x86_64", "; CPU time stolen by the host during the timings: 19%")
    assert line == (f"- Machine: x86_64, 2 CPU cores, 1-min load average {load:.1f} at the end ({says}); "
                    "CPU time stolen by the host during the timings: 19%.")
