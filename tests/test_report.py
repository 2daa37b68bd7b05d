"""results.json schema, paper-style tables, compare, plots, and the `eval`/`compare` commands on a tiny model."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from embedtune.cli import main
from embedtune.evaluation import plots
from embedtune.evaluation.plots import plot_curve
from embedtune.evaluation.report import (
    RESULTS_SCHEMA_VERSION,
    ResultsError,
    compare,
    load_results,
    markdown_table,
    results_payload,
    write_results,
)
from embedtune.evaluation.sts import StsScores

TOP_KEYS = {"schema_version", "main_metric", "task_order", "tasks", "mean", "std", "std_ddof", "eval_seconds",
            "wall_seconds", "sentences", "sentences_per_second", "meta"}
TASK_KEYS = {"pairs", "unique_sentences", "seconds", "cosine_spearman", "cosine_pearson", "manhattan_spearman",
             "manhattan_pearson", "euclidean_spearman", "euclidean_pearson"}
META_KEYS = {"model", "adapter", "run", "pooling", "prompt", "max_length", "dtype", "variant", "embedtune_version",
             "git_commit", "machine", "date"}


def _scores(values: dict[str, float]) -> list[StsScores]:
    return [StsScores(t, 10, 18, v, v - 1, v - 2, v - 3, v - 4, v - 5, 0.5) for t, v in values.items()]


def _payload(values: dict[str, float], **meta) -> dict:
    base = {"model": "m", "adapter": None, "run": None, "pooling": "last", "prompt": None, "max_length": 128,
            "dtype": "float32", "variant": "mteb_like"}
    return results_payload(_scores(values), {**base, **meta})


def test_payload_schema_is_stable_and_versioned(tmp_path):
    p = _payload({"STS12": 50.0, "STS13": 60.0, "BIOSSES": 70.0})
    assert RESULTS_SCHEMA_VERSION == 1 and p["schema_version"] == 1
    assert set(p) == TOP_KEYS
    assert set(p["tasks"]["STS12"]) == TASK_KEYS
    assert META_KEYS <= set(p["meta"])
    assert p["task_order"] == ["STS12", "STS13", "BIOSSES"]
    assert p["mean"] == pytest.approx(60.0) and p["std"] == pytest.approx(np.std([50, 60, 70]))
    assert p["sentences"] == 54 and p["sentences_per_second"] == pytest.approx(54 / 1.5)
    path = write_results(tmp_path / "out", p)
    assert path.name == "results.json" and (tmp_path / "out" / "results.md").is_file()
    assert load_results(tmp_path / "out") == json.loads(path.read_text()) == load_results(path)
    assert not [f for f in (tmp_path / "out").iterdir() if f.name.startswith(".")]  # no temporary leftovers


def test_nan_scores_are_written_as_null(tmp_path):
    p = results_payload(_scores({"STS12": float("nan")}), {})
    assert p["tasks"]["STS12"]["cosine_spearman"] is None and p["mean"] is None
    json.loads(write_results(tmp_path, p).read_text())  # strict JSON, no NaN token


def test_load_results_rejects_other_versions_and_files(tmp_path):
    p = _payload({"STS12": 50.0})
    p["schema_version"] = 99
    (tmp_path / "results.json").write_text(json.dumps(p))
    with pytest.raises(ResultsError, match=r"schema_version 99 .*reads version 1"):
        load_results(tmp_path)
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(ResultsError, match="not an embedtune results file"):
        load_results(tmp_path / "other.json")
    with pytest.raises(ResultsError, match="no such results file"):
        load_results(tmp_path / "missing")


def test_markdown_table_paper_layout_with_delta():
    base = _payload({"STS12": 50.0, "STS13": 60.0})
    tuned = _payload({"STS12": 70.5, "STS13": 61.0})
    md = markdown_table({"base": base, "tuned": tuned})
    lines = md.splitlines()
    assert lines[0] == "| Benchmark | base | tuned | Δ |"
    assert lines[2] == "| STS12 | 50.00 | 70.50 | +20.50 |"
    assert lines[3] == "| STS13 | 60.00 | 61.00 | +1.00 |"
    assert lines[4] == "| mean ± std | 55.00 ± 5.00 | 65.75 ± 4.75 | +10.75 |"
    three = markdown_table({"a": base, "b": tuned, "c": base})
    assert "Δ" not in three and three.splitlines()[0] == "| Benchmark | a | b | c |"


def test_compare_refuses_different_task_sets(tmp_path):
    a = _payload({"STS12": 50.0, "STS13": 60.0})
    b = _payload({"STS12": 50.0, "SICK-R": 60.0})
    with pytest.raises(ResultsError, match=r"run 'b' lacks STS13 and has extra SICK-R"):
        compare({"a": a, "b": b}, tmp_path)
    assert not (tmp_path / "comparison.png").exists()


def test_compare_writes_markdown_and_png(tmp_path):
    a = _payload({"STS12": 50.0, "STS13": 60.0})
    b = _payload({"STS13": 65.0, "STS12": 55.0})  # same set, other order
    md, png = compare({"base": a, "tuned": b}, tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| STS12 | 50.00 | 55.00 | +5.00 |" in md
    assert md in (tmp_path / "comparison.md").read_text()


def test_plot_curve(tmp_path):
    points = [{"step": s, "cosine_spearman": 40 + s / 10} for s in (200, 0, 100)]
    path = plot_curve(points, tmp_path / "curve.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no point"):
        plot_curve([{"step": 1}], tmp_path / "x.png")


def test_plot_curve_puts_a_long_legend_beside_the_axes(tmp_path):
    import struct

    def png_width(path):  # IHDR: 8-byte signature, 4-byte length, b"IHDR", then width, height
        return struct.unpack(">I", path.read_bytes()[16:20])[0]

    few = [{"step": s, "cosine_spearman": 50.0 + s, "task": f"cell-{i}"} for i in range(2) for s in (0, 1)]
    many = [{"step": s, "cosine_spearman": 50.0 + s, "task": f"default__lr0.0005__cell-{i}"}
            for i in range(6) for s in (0, 1)]
    assert png_width(plot_curve(few, tmp_path / "few.png")) == 600
    assert png_width(plot_curve(many, tmp_path / "many.png")) > 600  # widened to make room on the right


def test_plots_name_the_extra_without_matplotlib(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"embedtune\[plot\]"):
        plots.plot_curve([{"step": 1, "cosine_spearman": 1.0}], tmp_path / "c.png")


# ---- the commands, on a tiny model and a tiny data folder --------------------------------------------------
def test_cli_eval_then_compare(tiny_llama, tiny_sts_dir, tmp_path, capsys):
    outs = []
    for pooling in ("last", "mean"):
        out = tmp_path / pooling
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "40 pairs, expected 250": the tiny files are short on purpose
            rc = main(["eval", "--model", str(tiny_llama), "--device", "cpu", "--tasks", "STS17,stsb",
                       "--pooling", pooling, "--data-dir", str(tiny_sts_dir), "--batch-size", "16",
                       "--out", str(out), "--label", pooling])
        assert rc == 0
        outs.append(out)
        captured = capsys.readouterr()
        printed = captured.out
        assert "STS17: cosine Spearman" in captured.err  # logged as each benchmark finishes
        assert not (out / "results.partial.json").exists()
        assert "| STS17 |" in printed and "| STSBenchmark |" in printed and "mean ± std" in printed
        payload = load_results(out)
        assert payload["task_order"] == ["STS17", "STSBenchmark"]
        assert payload["meta"]["pooling"] == pooling and payload["meta"]["model"] == str(tiny_llama)
        assert payload["tasks"]["STS17"]["pairs"] == 40 and payload["sentences_per_second"] > 0
    rc = main(["compare", str(outs[0]), str(outs[1] / "results.json"), "--out", str(tmp_path / "cmp")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "| Benchmark | last | mean | Δ |"
    assert (tmp_path / "cmp" / "comparison.png").is_file()


def test_cli_eval_unknown_task_lists_known(capsys):
    assert main(["eval", "--tasks", "STS12,STS99"]) == 2  # fails before any model loads
    err = capsys.readouterr().err
    assert "STS99" in err and "STSBenchmark" in err and "SICK-R" in err


def test_cli_compare_different_tasks(tmp_path, capsys):
    for name, tasks in (("a", {"STS12": 1.0}), ("b", {"STS13": 2.0})):
        write_results(tmp_path / name, _payload(tasks))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]) == 2
    assert "lacks STS12" in capsys.readouterr().err


def test_plot_tradeoff_writes_a_png_and_rejects_nothing(tmp_path):
    from embedtune.evaluation.plots import plot_tradeoff

    points = [{"label": "ours", "speed": 120.0, "score": 81.2, "group": "embedtune"},
              {"label": "peer", "speed": 400.0, "score": 80.1, "group": "peer"}]
    path = plot_tradeoff(points, tmp_path / "t.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no points"):
        plot_tradeoff([], tmp_path / "u.png")


def test_bar_charts_of_high_scores_start_their_axis_near_the_lowest():
    bar_floor = plots.bar_floor
    assert bar_floor([71.76, 88.5, 80.0]) == 65.0  # 5 below the lowest, down to a multiple of 5
    assert bar_floor([75.0, 90.0]) == 70.0
    assert bar_floor([21.6, 80.0]) == 0.0  # an untrained base among them: the axis starts at zero
    assert bar_floor([]) == 0.0 and bar_floor([float("nan"), 50.0]) == 45.0
