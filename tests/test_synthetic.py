"""``embedtune data synthesize``: sentence and paraphrase checks, counted rejections, seeding, the chat
generator on a real model, and the CLI's errors (no output on failure)."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from conftest import make_tiny_model

from embedtune.cli import main
from embedtune.data.synthetic import (
    PARAPHRASE,
    SCIENCE_TOPICS,
    ChatGenerator,
    SynthesisError,
    first_sentence,
    parse_topics,
    sentence_problem,
    synthesize_pairs,
)
from embedtune.data.triplets import read_examples


class Scripted:
    """A generator stand-in: sentence prompts get the next scripted reply; a paraphrase prompt gets its
    sentence through ``rewrite``. Records every call."""

    def __init__(self, replies, rewrite=lambda s: "In other words, " + s[0].lower() + s[1:]):
        self.replies, self.rewrite, self.calls = list(replies), rewrite, []

    def __call__(self, instructions, temperature):
        self.calls.append((list(instructions), temperature))
        out = []
        for text in instructions:
            head = PARAPHRASE.split("{sentence}")[0]
            out.append(self.rewrite(text[len(head):]) if text.startswith(head) else self.replies.pop(0))
        return out


def test_first_sentence_takes_the_first_line_and_sentence_without_quotes():
    assert first_sentence('"Cells divide by mitosis. Then they grow."\nMore text') == "Cells divide by mitosis."
    assert first_sentence("  The protein binds DNA!") == "The protein binds DNA!"
    assert first_sentence("an unfinished thought without an end") == ""


@pytest.mark.parametrize("text, reason", [
    ("", "no complete sentence"),
    ("Too short here.", "under 6 words"),
    ("word " * 51 + "end.", "over 50 words"),
    ("Sure, here is a sentence about genes for you.", "a reply, not a sentence"),
    ("The kinase phosphorylates its substrate in the nucleus.", None),
])
def test_sentence_problem_names_the_reason(text, reason):
    assert sentence_problem(text, 6, 50) == reason


def test_parse_topics_forms(tmp_path):
    assert parse_topics("science") == list(SCIENCE_TOPICS)
    assert parse_topics(" contract law ;tax law; ") == ["contract law", "tax law"]
    f = tmp_path / "topics.txt"
    f.write_text("# my domain\nwind turbines\n\nsolar cells  # photovoltaics\n")
    assert parse_topics(f"@{f}") == ["wind turbines", "solar cells"]
    with pytest.raises(SynthesisError, match="no topics"):
        parse_topics(" ; ;")
    with pytest.raises(SynthesisError, match="not found"):
        parse_topics(f"@{tmp_path / 'missing.txt'}")


def test_pairs_are_checked_and_every_rejection_is_counted():
    good = [f"Gene {i} regulates the growth of cells in the liver." for i in range(4)]
    replies = [good[0], "Sure, here is one sentence about the topic you asked.", good[1], good[0].upper(),
               "no end", good[2], good[3], "Short one."]
    copies = {good[1]: good[1].lower() + "",  # a copy but for case: rejected
              good[2]: "Tiny."}  # too short: rejected
    gen = Scripted(replies, rewrite=lambda s: copies.get(s, "It is known that " + s[0].lower() + s[1:]))
    pairs, report = synthesize_pairs(gen, ["genetics"], 4, batch_size=8, show_progress=False)
    assert pairs == [(good[0], "It is known that " + good[0][0].lower() + good[0][1:]),
                     (good[3], "It is known that " + good[3][0].lower() + good[3][1:])]
    assert report.prompts == 8 and report.pairs == 2
    assert report.sentence_rejects == {"a reply, not a sentence": 1, "duplicate": 1, "no complete sentence": 1,
                                       "under 6 words": 1}
    assert report.paraphrase_rejects == {"a copy of its sentence": 1, "under 6 words": 1}
    # every prompt is accounted for: kept sentences + rejected = prompts
    assert 4 + sum(report.sentence_rejects.values()) == report.prompts
    assert [t for _, t in gen.calls] == [0.9, 0.7]


def test_too_few_good_sentences_raise_after_the_prompt_budget():
    gen = Scripted(["no sentence end"] * 40)
    with pytest.raises(SynthesisError, match=r"only 0 of 5 sentences passed after 20 prompts"):
        synthesize_pairs(gen, ["x"], 5, batch_size=8, show_progress=False)


def test_the_topic_draw_is_seeded():
    def prompts(seed):
        gen = Scripted([f"Sentence number {i} is about a thing here." for i in range(6)])
        synthesize_pairs(gen, list(SCIENCE_TOPICS), 6, seed=seed, batch_size=6, show_progress=False)
        return gen.calls[0][0]

    assert prompts(3) == prompts(3)
    assert prompts(3) != prompts(4)


def test_chat_generator_refuses_a_tokenizer_without_a_chat_template(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with pytest.raises(SynthesisError, match="no chat template"):
        ChatGenerator(AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama))


def test_cli_fails_cleanly_when_the_model_writes_no_sentences(tmp_path, capsys):
    """A random tiny model with a chat template never ends a sentence: exit 2, the reason, and no file."""
    folder = make_tiny_model("llama", tmp_path / "chat")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    out = tmp_path / "pairs.csv.gz"
    code = main(["data", "synthesize", "--topics", "the park", "--pairs", "3", "--batch-size", "4",
                 "--max-new-tokens", "4", "--model", str(folder), "--dtype", "float32", "--device", "cpu",
                 "--out", str(out)])
    assert code == 2
    assert "only 0 of 3 sentences passed after 12 prompts" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("pairs*"))


def test_cli_rejects_a_bad_output_name_before_loading_a_model(tmp_path, capsys):
    code = main(["data", "synthesize", "--topics", "science", "--pairs", "3", "--model", str(tmp_path / "nothing"),
                 "--out", str(tmp_path / "pairs.parquet")])
    assert code == 2
    assert "expected a .csv, .tsv or .jsonl name" in capsys.readouterr().err
    code = main(["data", "synthesize", "--topics", "science", "--pairs", "3", "--dtype", "int4",
                 "--out", str(tmp_path / "pairs.csv")])
    assert code == 2 and "--dtype 'int4': expected one of auto" in capsys.readouterr().err
    assert not (tmp_path / "pairs.csv").exists()


@pytest.mark.real_model
def test_the_packaged_model_writes_readable_pairs(tmp_path):
    """The default instruct model through the CLI: a pair file `embedtune train` reads, and its report."""
    torch.set_num_threads(2)
    out = tmp_path / "science.csv.gz"
    code = main(["data", "synthesize", "--topics", "immunology; genetics", "--pairs", "4", "--batch-size", "8",
                 "--max-new-tokens", "48", "--out", str(out)])
    assert code == 0
    examples, _ = read_examples(out)
    report = json.loads((tmp_path / "science.csv.gz.report.json").read_text())
    assert report["pairs"] == len(examples) and 1 <= len(examples) <= 4
    assert report["pairs"] + sum(report["paraphrase_rejects"].values()) == 4
    for e in examples:
        assert e.negative is None and e.anchor != e.positive
        assert sentence_problem(e.anchor, 6, 50) is None and sentence_problem(e.positive, 6, 50) is None
    with gzip.open(out, "rt") as f:
        assert f.readline().strip() == "sent0,sent1"
