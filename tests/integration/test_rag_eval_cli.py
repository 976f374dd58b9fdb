"""`tailor rag index` + `tailor rag eval` for real: the shipped XQuAD BEIR slice with the built-in minilm-l6 pack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tailorlm.cli import main

pytestmark = pytest.mark.integration
XQUAD = Path(__file__).resolve().parents[2] / "examples" / "data" / "retrieval" / "xquad_en_beir"


def test_index_and_eval_through_the_cli(tmp_path: Path, capsys) -> None:
    assert main(["rag", "index", str(XQUAD), "--index", str(tmp_path / "index")]) == 0
    assert "files: 1 added" in capsys.readouterr().out
    # Every fourth judged question (~300): enough to separate the modes, a quarter of the time.
    rows = (XQUAD / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("\n".join([rows[0], *rows[1::4]]) + "\n", encoding="utf-8")

    code = main(["rag", "eval", "--index", str(tmp_path / "index"), "--queries", str(XQUAD), "--qrels", str(qrels),
                 "--json"])
    result = json.loads(capsys.readouterr().out)

    assert code == 0 and result["queries"] == len(rows[1::4])
    metrics = result["metrics"]
    assert list(metrics) == ["dense", "bm25", "hybrid"]
    assert all(0.0 < value <= 1.0 for values in metrics.values() for value in values.values()), metrics
    ndcg = {mode: values["ndcg@10"] for mode, values in metrics.items()}
    assert ndcg["hybrid"] >= max(ndcg["dense"], ndcg["bm25"]) - 0.01, ndcg
