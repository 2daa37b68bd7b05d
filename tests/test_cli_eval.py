"""``embedtune eval --tasks`` with the user's own STS-format files beside benchmark names: the same
results.json, tables and compare; a bad file exits 2 before the model loads and writes nothing."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import WORDS

from embedtune.cli import main
from embedtune.evaluation.report import load_results


@pytest.fixture()
def own_file(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "my_dev.tsv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["sentence1", "sentence2", "score"])
        for _ in range(25):
            w.writerow([" ".join(rng.choice(WORDS, 5)), " ".join(rng.choice(WORDS, 4)), f"{rng.uniform(0, 5):.2f}"])
    return path


def test_own_file_sits_beside_benchmarks_in_results_and_compare(tmp_path, tiny_llama, tiny_sts_dir, own_file,
                                                                  capsys):
    outs = []
    for label, prompt in (("a", "none"), ("b", "p1")):
        out = tmp_path / label
        with pytest.warns(UserWarning, match="STS17: 40 pairs"):  # the tiny benchmark is not the real size
            assert main(["eval", "--model", str(tiny_llama), "--tasks", f"STS17,{own_file}", "--prompt", prompt,
                         "--data-dir", str(tiny_sts_dir), "--out", str(out), "--label", label]) == 0
        outs.append(out)
    payload = load_results(outs[0])
    assert payload["task_order"] == ["STS17", "my_dev"] and payload["tasks"]["my_dev"]["pairs"] == 25
    assert payload["meta"]["task_files"] == {"my_dev": str(own_file.resolve())}
    assert "| my_dev |" in capsys.readouterr().out
    assert main(["compare", str(outs[0]), str(outs[1]), "--out", str(tmp_path / "cmp")]) == 0
    assert "| my_dev |" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 0


def test_bad_own_file_exits_2_before_the_model_loads(tmp_path, own_file, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence1\tsentence2\tscore\na b\tc d\t1\ne f\tg h\thigh\n")
    out = tmp_path / "out"
    for spec, message in ((f"STS12,{bad}", f"{bad}:3: field 'score' is 'high', not a number"),
                          (str(tmp_path / "missing.tsv"), "missing.tsv not found")):
        # A model that does not exist: the task error must come first.
        assert main(["eval", "--model", str(tmp_path / "no-model"), "--tasks", spec, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()


def test_num_layers_cuts_a_base_model_and_is_refused_for_a_run(tmp_path, tiny_llama, tiny_sts_dir, capsys):
    out = tmp_path / "cut"
    with pytest.warns(UserWarning, match="STS17: 40 pairs"):
        assert main(["eval", "--model", str(tiny_llama), "--num-layers", "1", "--tasks", "STS17",
                     "--data-dir", str(tiny_sts_dir), "--out", str(out)]) == 0
    assert load_results(out)["meta"]["num_layers"] == 1  # of the tiny model's 2
    capsys.readouterr()
    assert main(["eval", "--model", str(tiny_llama), "--num-layers", "3", "--tasks", "STS17",
                 "--data-dir", str(tiny_sts_dir), "--out", str(tmp_path / "deep")]) == 2
    assert "has 2 decoder layers; choose 1..2" in capsys.readouterr().err
    assert not (tmp_path / "deep").exists()
    # A run was trained at a depth; loading it at another would misplace its adapter.
    assert main(["eval", "--run", str(tmp_path / "some-run"), "--num-layers", "1", "--tasks", "STS17",
                 "--out", str(tmp_path / "run-out")]) == 2
    assert "--num-layers applies to a base model" in capsys.readouterr().err


def test_no_progress_drops_the_bars_but_keeps_each_score_line(tmp_path, tiny_llama, tiny_sts_dir, capsys):
    for flag, bars in (([], True), (["--no-progress"], False)):
        with pytest.warns(UserWarning, match="STS17: 40 pairs"):
            assert main(["eval", "--model", str(tiny_llama), "--tasks", "STS17", "--data-dir", str(tiny_sts_dir),
                         "--out", str(tmp_path / f"out{len(flag)}"), *flag]) == 0
        err = capsys.readouterr().err
        assert ("encode:" in err) is bars
        assert "STS17: cosine Spearman" in err
        assert (tmp_path / f"out{len(flag)}" / "results.json").is_file()
