"""Load the real public data sets in ../shared/data (skipped where that folder is absent)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tailorlm.data.formats import load_examples
from tailorlm.data.loaders import read_beir

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"the shared real data sets are not at {SHARED}")


@pytest.mark.parametrize(
    ("relative", "options", "format", "rows"),
    [
        ("sentiment/twitter_financial_news_sentiment/sent_valid.csv", {}, "text_label", 2388),
        ("sentiment/uci_sentiment_labelled_sentences/imdb_labelled.txt", {"csv_delimiter": "\t", "csv_quoting": "none"}, "text_label", 1000),
        ("sentiment/poem_sentiment/dev.tsv", {"csv_quoting": "none", "csv_columns": ["id", "text", "label"]}, "text_label", 105),
        ("legal/legalbench_hearsay/train.tsv", {"columns": {"label": "answer"}}, "text_label", 5),
        ("medical_qa/medquad/medquad_cdc.jsonl", {}, "qa", 270),
        ("education/gsm8k/test.jsonl", {}, "qa", 1319),
        ("qa_extractive/xquad/xquad.en.json", {}, "squad", 1190),
        ("chat_preference/hh_rlhf_harmless_base/test.jsonl.gz", {}, "preference", 2312),
        ("summarization/scitldr_a/dev.jsonl", {}, "source_target", 619),
        ("translation/xquad_parallel/xquad_questions.en-de.jsonl", {"columns": {"source": "en", "target": "de"}}, "source_target", 1190),
        ("instruction_tuning/self_instruct/seed_tasks.jsonl",
         {"columns": {"input": "instances.0.input", "output": "instances.0.output"}}, "alpaca", 175),
        ("pretraining_text/tiny_shakespeare/input.txt", {"text_split": "paragraph"}, "text", 7222),
        ("retrieval/xquad_en_beir", {}, "text", 240),
    ],
)
def test_real_file_loads(relative, options, format, rows):
    data = load_examples(SHARED / relative, **options)
    assert (data.format, len(data.examples)) == (format, rows)
    assert all(e.origin is not None and e.origin.row >= 1 for e in data.examples)


def test_real_label_counts_match_the_source_notes():
    data = load_examples(SHARED / "sentiment/twitter_financial_news_sentiment/sent_valid.csv")
    assert Counter(e.label for e in data.examples) == {"0": 347, "1": 475, "2": 1566}


def test_real_beir_folder():
    beir = read_beir(SHARED / "retrieval/medquad_beir")
    assert (len(beir.corpus), len(beir.queries), sum(len(v) for v in beir.qrels["test"].values())) == (3097, 3108, 3108)
