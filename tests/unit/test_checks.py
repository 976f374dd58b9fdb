"""`tailor data check`: exact counts on small files, overlap across splits, exit codes, JSON and redaction."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tailorlm.cli import main
from tailorlm.data.checks import check_data, redact_data
from tailorlm.data.overlap import choose_bands, jaccard, near_duplicates, shingles
from tailorlm.errors import ConfigError


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(user: str, answer: str | None, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def codes(report) -> dict[str, str]:
    return {f.code: f.level for f in report.findings}


QUESTIONS = [
    ("What is the capital of France?", "Paris."),
    ("Which organ pumps blood through the body?", "The heart."),
    ("What does a court call a statement made outside of court?", "Hearsay."),
    ("How often should a patient with diabetes check blood sugar levels during a normal week?", "Daily."),
    ("Why did the shares rise after the earnings report?", "Profits beat forecasts."),
    ("Who wrote the play about the prince of Denmark?", "Shakespeare."),
]
NEAR = ("How often should a patient with diabetes check blood sugar levels during a normal month?", "Daily.")


def test_single_file_is_one_split_with_exact_counts(tmp_path, tokenizer):
    rows = [chat(q, a) for q, a in QUESTIONS[:3]]
    rows += [chat("What is the capital of  France? ", "Paris."), chat(*QUESTIONS[1]), chat("   ", "   ")]
    report = check_data(write_jsonl(tmp_path / "train.jsonl", rows), tokenizer=tokenizer)

    [split] = report.splits
    assert (split.name, split.rows, split.format, split.kind) == ("train", 6, "messages", "chat")
    assert (split.duplicates, split.empty) == (2, 1)
    dup = next(f for f in report.findings if f.code == "duplicate_rows")
    assert dup.level == "warning" and dup.origins == [f"{tmp_path / 'train.jsonl'}, row 4", f"{tmp_path / 'train.jsonl'}, row 5"]
    assert "row 4 repeats" in dup.message and dup.message.endswith("row 1")
    assert (split.assistant_turns, split.turns_without_end_of_turn, split.chats_without_assistant) == (6, 0, 0)
    assert report.chat_template == "default ChatML (the tokenizer has none)" and report.end_of_turn == "<|im_end|>"
    assert report.overlaps == [] and not report.has_errors
    assert split.sample.startswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert "[[Paris.<|im_end|>]]" in split.sample


def test_token_percentiles_and_truncation_for_text(tmp_path, tokenizer):
    long = "the quick brown fox jumps over the lazy dog " * 5
    rows = [{"text": "hello"}] * 1 + [{"text": "hello hello"}] + [{"text": long + str(i)} for i in range(3)]
    report = check_data(write_jsonl(tmp_path / "corpus.jsonl", rows), tokenizer=tokenizer, max_length=16)

    [split] = report.splits
    lengths = sorted(len(tokenizer(r["text"])["input_ids"]) + 1 for r in rows)  # + EOS, as training adds it
    assert split.kind == "text" and split.truncated == 3
    assert split.tokens["max"] == lengths[-1] and split.tokens["p50"] == lengths[2]
    assert split.tokens["total"] == sum(lengths)
    truncated = next(f for f in report.findings if f.code == "truncated")
    assert truncated.level == "warning" and truncated.message.startswith("3 rows are longer than max_length 16 tokens")
    assert [o.rsplit(" ", 1)[1] for o in truncated.origins] == ["3", "4", "5"]
    assert report.max_length_from == "--max-length"


def test_missing_assistant_turn_is_an_error(tmp_path, tokenizer):
    rows = [chat(*QUESTIONS[0]), chat("Tell me something.", None), chat(*QUESTIONS[1])]
    report = check_data(write_jsonl(tmp_path / "train.jsonl", rows), tokenizer=tokenizer)
    assert report.has_errors and report.splits[0].chats_without_assistant == 1
    finding = report.errors[0]
    assert (finding.code, finding.split, finding.origins) == ("no_assistant_turn", "train", [f"{tmp_path / 'train.jsonl'}, row 2"])


def test_turns_without_end_of_turn_token_are_an_error(tmp_path, tokenizer):
    # A template that never closes an assistant turn: the model could not learn to stop.
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}" \
                              "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    rows = [chat(*QUESTIONS[0]), chat(*QUESTIONS[1])]
    report = check_data(write_jsonl(tmp_path / "train.jsonl", rows), tokenizer=tokenizer)
    assert report.chat_template == "the tokenizer's own" and report.end_of_turn is None
    assert report.splits[0].turns_without_end_of_turn == 2
    assert codes(report) == {"no_end_of_turn": "error"}
    assert report.errors[0].message.startswith("2 of 2 assistant turns do not end with the end-of-turn token")


def test_label_distribution_and_imbalance(tmp_path, tokenizer):
    path = tmp_path / "labels.csv"
    path.write_text("text,label\n" + "".join(f"good movie {i},pos\n" for i in range(12)) + "awful film,neg\n", encoding="utf-8")
    report = check_data(path, tokenizer=tokenizer)
    assert report.splits[0].labels == {"pos": 12, "neg": 1}
    assert codes(report) == {"label_imbalance": "warning"} and not report.has_errors
    assert report.splits[0].sample == "good movie 0\n-> label 'pos'"


def test_repeated_text_with_another_label_is_flagged(tmp_path, tokenizer):
    path = tmp_path / "labels.csv"
    path.write_text("text,label\nfine film,pos\nbad film,neg\nfine  film,neg\nbad film,neg\n", encoding="utf-8")
    report = check_data(path, tokenizer=tokenizer)
    assert report.splits[0].duplicates == 2 and report.splits[0].labels == {"neg": 3, "pos": 1}
    conflict = next(f for f in report.findings if f.code == "conflicting_labels")
    assert conflict.origins == [f"{path}, row 4"] and "says 'neg'" in conflict.message


def test_one_class_is_an_error(tmp_path, tokenizer):
    path = tmp_path / "labels.csv"
    path.write_text("text,label\nfine,pos\ngreat,pos\n", encoding="utf-8")
    report = check_data(path, tokenizer=tokenizer)
    assert report.splits[0].labels == {"pos": 2} and codes(report) == {"single_class": "error"}


def test_personal_data_is_counted_per_kind(tmp_path, tokenizer):
    rows = [chat("Mail jo@example.com or call (555) 123-4567", "Done."), chat(*QUESTIONS[0]), chat("Card 4111 1111 1111 1111", "No.")]
    report = check_data(write_jsonl(tmp_path / "train.jsonl", rows), tokenizer=tokenizer)
    assert report.splits[0].personal_data == {"email": 1, "phone": 1, "card": 1}
    finding = next(f for f in report.findings if f.code == "personal_data")
    assert finding.level == "warning" and [o.rsplit(" ", 1)[1] for o in finding.origins] == ["1", "3"]


def write_recipe(tmp_path: Path, data: dict, **top) -> Path:
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"data": data, **top}), encoding="utf-8")
    return path


def test_overlap_between_train_and_eval_exact_and_near(tmp_path, tokenizer):
    system = "You are a careful assistant for doctors, lawyers and analysts. Answer briefly and cite no sources."
    write_jsonl(tmp_path / "train.jsonl", [chat(q, a, system) for q, a in QUESTIONS])
    eval_rows = [
        chat(*QUESTIONS[0], system),                                   # exact
        chat("Which organ  pumps blood through the body?\n", "The heart.", system),  # exact after whitespace
        chat(*NEAR, system),                                           # near duplicate of QUESTIONS[3]
        chat("What is the boiling point of water at sea level?", "100 degrees Celsius.", system),
        chat("Name a prime number larger than ten.", "Eleven.", system),
    ]
    write_jsonl(tmp_path / "eval.jsonl", eval_rows)
    recipe = write_recipe(tmp_path, {"train": "train.jsonl", "eval": "eval.jsonl"})
    report = check_data(recipe, tokenizer=tokenizer, max_length=256)

    assert [s.name for s in report.splits] == ["train", "eval"]
    [item] = report.overlaps
    assert (item.a, item.b, item.exact, item.near) == ("train", "eval", 2, 1)
    train, dev = str(tmp_path / "train.jsonl"), str(tmp_path / "eval.jsonl")
    assert item.exact_pairs == [(f"{dev}, row 1", f"{train}, row 1"), (f"{dev}, row 2", f"{train}, row 2")]
    assert [pair[:2] for pair in item.near_pairs] == [(f"{dev}, row 3", f"{train}, row 4")]
    assert 0.8 <= item.near_pairs[0][2] < 1.0
    assert codes(report) == {"overlap_exact": "warning", "overlap_near": "warning"}
    assert report.max_length == 256


def test_recipe_model_max_length_and_carved_split(tmp_path, tiny_llama_dir):
    write_jsonl(tmp_path / "train.jsonl", [chat(f"question number {i} about topic {i * 7}", f"answer {i}") for i in range(20)])
    recipe = write_recipe(tmp_path, {"train": "train.jsonl", "split": {"eval": 0.25}}, model=str(tiny_llama_dir),
                          train={"max_length": 24})
    report = check_data(recipe)
    assert report.tokenizer == f"{tiny_llama_dir} (from the recipe)"
    assert (report.max_length, report.max_length_from) == (24, "the recipe")
    assert [(s.name, s.rows, s.carved_share) for s in report.splits] == [("train", 15, None), ("eval", 5, 0.25)]
    assert report.overlaps[0].exact == 0


def test_cli_json_and_exit_codes(tmp_path, tiny_llama_dir, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", [chat(q, a) for q, a in QUESTIONS])
    assert main(["data", "check", str(good), "--model", str(tiny_llama_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokenizer"] == str(tiny_llama_dir) and report["errors"] == 0
    assert report["splits"][0]["rows"] == 6 and report["findings"] == []

    bad = write_jsonl(tmp_path / "bad.jsonl", [chat(*QUESTIONS[0]), chat("no answer here", None)])
    assert main(["data", "check", str(bad), "--model", str(tiny_llama_dir), "--json", "--max-length", "64"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 1 and report["findings"][0]["code"] == "no_assistant_turn"
    assert report["max_length"] == 64

    assert main(["data", "check", str(bad), "--model", str(tiny_llama_dir)]) == 1
    out = capsys.readouterr().out
    assert "[no_assistant_turn]" in out and "not ready: 1 error, 0 warnings" in out


def test_cli_redact_keeps_stdout_json_only(tmp_path, tiny_llama_dir, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [chat("write to jo@example.com", "ok")])
    out = tmp_path / "d.redacted.jsonl"
    code = main(["data", "check", str(data), "--model", str(tiny_llama_dir), "--json", "--redact", str(out)])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["splits"][0]["personal_data"] == {"email": 1}
    assert "wrote a redacted copy" in captured.err
    assert json.loads(out.read_text())["messages"][0]["content"] == "write to [EMAIL]"


def test_cli_bad_column_flag_is_a_one_line_error(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    assert main(["data", "check", str(data), "--column", "text"]) == 2
    assert "bad --column" in capsys.readouterr().err


def test_redact_jsonl_csv_json_and_text(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"text": "mail jo@example.com", "n": 5}, {"text": "call +44 20 7946 0958"}])
    done = redact_data(jsonl, tmp_path / "a.out.jsonl")
    assert done.format == "jsonl" and done.replaced == {"email": 1, "phone": 1}
    assert (tmp_path / "a.out.jsonl").read_text() == '{"text": "mail [EMAIL]", "n": 5}\n{"text": "call [PHONE]"}\n'

    csv_in = tmp_path / "b.csv"
    csv_in.write_text('text,label\n"ssn 123-45-6789, ok",pos\nfrom 10.0.0.1,neg\n', encoding="utf-8")
    assert redact_data(csv_in, tmp_path / "b.out.csv").replaced == {"ssn": 1, "ip": 1}
    assert (tmp_path / "b.out.csv").read_text() == 'text,label\n"ssn [SSN], ok",pos\nfrom [IP],neg\n'

    json_in = tmp_path / "c.json"
    json_in.write_text(json.dumps([{"q": "card 4111-1111-1111-1111", "tags": ["a@b.io"]}]), encoding="utf-8")
    redact_data(json_in, tmp_path / "c.out.json")
    assert json.loads((tmp_path / "c.out.json").read_text()) == [{"q": "card [CARD]", "tags": ["[EMAIL]"]}]

    text_in = tmp_path / "notes.txt"
    text_in.write_text("reach me at jo@example.com\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="written as JSON Lines"):
        redact_data(text_in, tmp_path / "notes.out.txt")
    assert redact_data(text_in, tmp_path / "notes.out.jsonl").format == "jsonl"
    assert json.loads((tmp_path / "notes.out.jsonl").read_text()) == {"text": "reach me at [EMAIL]\n"}


def test_redact_refuses_to_overwrite_the_input(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "a.jsonl", [{"text": "mail jo@example.com"}])
    before = data.read_text()
    monkeypatch.chdir(tmp_path)
    for out in (data, Path("a.jsonl"), tmp_path / "sub" / ".." / "a.jsonl"):
        with pytest.raises(ConfigError, match="refusing to overwrite the input"):
            redact_data(data, out)
    assert data.read_text() == before


def test_near_duplicates_finds_planted_pairs_quickly():
    import random

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    corpus = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) for _ in range(10_000)]
    queries = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) for _ in range(2_000)]
    planted = {}
    for k in range(30):
        tokens = corpus[k * 300].split()
        tokens[len(tokens) // 2] = "zz"  # one word changed
        queries[k * 60] = " ".join(tokens)
        planted[k * 60] = k * 300
    start = time.perf_counter()
    found = near_duplicates(queries, corpus, threshold=0.8)
    elapsed = time.perf_counter() - start
    assert {q: c for q, c, _ in found} == planted
    assert elapsed < 30, f"near-duplicate search took {elapsed:.1f}s for 2k x 10k rows"


def test_near_duplicate_building_blocks():
    assert jaccard(shingles("Hello,  World!"), shingles("hello world")) == 1.0
    assert shingles("").size == 0 and near_duplicates(["", " "], ["", "x"]) == []
    assert choose_bands(0.8) == (21, 6)
