"""Reading files into records: every file type, the row numbers kept, and every kind of bad input."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tailorlm.data.examples import Origin
from tailorlm.data.loaders import looks_like_header, read_beir, read_records
from tailorlm.errors import ConfigError, DataError


def rows(records):
    """(fields, row) pairs, for compact assertions."""
    return [(r.fields, r.origin.row) for r in records]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- JSON Lines and JSON ---------------------------------------------------------------------------------------


def test_jsonl_keeps_line_numbers_across_blank_lines(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": 0}\n\n{"text": "b\\u2028c", "label": 1}\n')
    records = read_records(path)
    assert rows(records) == [({"text": "a", "label": 0}, 1), ({"text": "b\u2028c", "label": 1}, 3)]
    assert records[0].origin == Origin(str(path), 1)


def test_ndjson_and_gzipped_jsonl(tmp_path):
    write(tmp_path / "d.ndjson", '{"a": 1}\n')
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n{"a": 2}\n'))
    assert rows(read_records(tmp_path / "d.ndjson")) == [({"a": 1}, 1)]
    assert rows(read_records(tmp_path / "d.jsonl.gz")) == [({"a": 1}, 1), ({"a": 2}, 2)]


def test_json_array_rows_are_item_numbers(tmp_path):
    path = write(tmp_path / "d.json", json.dumps([{"q": "x"}, {"q": "y"}], indent=2))
    assert rows(read_records(path)) == [({"q": "x"}, 1), ({"q": "y"}, 2)]


def test_json_lines_saved_as_json_are_read_as_lines(tmp_path):
    path = write(tmp_path / "d.json", '{"q": "x"}\n{"q": "y"}\n')
    assert rows(read_records(path)) == [({"q": "x"}, 1), ({"q": "y"}, 2)]


def test_squad_json_is_one_record_per_question(tmp_path):
    squad = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "Paris is in France.", "qas": [
            {"id": "q1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]},
            {"id": "q2", "question": "What is in France?", "answers": [{"text": "Paris", "answer_start": 0}]},
        ]},
    ]}]}
    path = write(tmp_path / "squad.json", json.dumps(squad))
    assert rows(read_records(path)) == [
        ({"id": "q1", "title": "T", "context": "Paris is in France.", "question": "Where is Paris?",
          "answers": [{"text": "France", "answer_start": 12}]}, 1),
        ({"id": "q2", "title": "T", "context": "Paris is in France.", "question": "What is in France?",
          "answers": [{"text": "Paris", "answer_start": 0}]}, 2),
    ]


def test_json_objects_keyed_by_id(tmp_path):
    path = write(tmp_path / "d.json", json.dumps({"101": {"QUESTION": "q?"}, "102": {"QUESTION": "r?"}}))
    assert rows(read_records(path)) == [({"id": "101", "QUESTION": "q?"}, 1), ({"id": "102", "QUESTION": "r?"}, 2)]


# --- CSV and TSV ---------------------------------------------------------------------------------------------


def test_csv_with_header_rows_are_file_lines(tmp_path):
    path = write(tmp_path / "d.csv", 'text,label\n"Good, really",1\n"two\nlines",0\n\nBad.,0\n')
    assert rows(read_records(path)) == [
        ({"text": "Good, really", "label": "1"}, 2),
        ({"text": "two\nlines", "label": "0"}, 3),
        ({"text": "Bad.", "label": "0"}, 6),
    ]


def test_tsv_without_header_gets_numbered_columns(tmp_path):
    path = write(tmp_path / "d.tsv", "0\tto water, cloudlike\t0\n1\tshall yet be glad\t1\n")
    assert rows(read_records(path)) == [
        ({"col0": "0", "col1": "to water, cloudlike", "col2": "0"}, 1),
        ({"col0": "1", "col1": "shall yet be glad", "col2": "1"}, 2),
    ]


def test_csv_columns_name_a_headerless_file_and_replace_a_header(tmp_path):
    bare = write(tmp_path / "bare.tsv", "0\tverse\t1\n")
    headed = write(tmp_path / "headed.csv", "a,b\nx y,1\n")
    assert rows(read_records(bare, csv_columns=["id", "text", "label"])) == [({"id": "0", "text": "verse", "label": "1"}, 1)]
    assert rows(read_records(headed, csv_columns=["text", "label"])) == [({"text": "x y", "label": "1"}, 2)]


def test_csv_header_can_be_forced(tmp_path):
    path = write(tmp_path / "d.csv", "good,pos\nbad,neg\n")
    assert rows(read_records(path, csv_header=False)) == [({"col0": "good", "col1": "pos"}, 1), ({"col0": "bad", "col1": "neg"}, 2)]
    assert rows(read_records(path, csv_header=True)) == [({"good": "bad", "pos": "neg"}, 2)]


def test_quoting_none_keeps_quote_characters(tmp_path):
    path = write(tmp_path / "d.tsv", 'text\tlabel\n"who\'s we?--some\t0\nnext line\t1\n')
    assert rows(read_records(path, csv_quoting="none")) == [
        ({"text": '"who\'s we?--some', "label": "0"}, 2), ({"text": "next line", "label": "1"}, 3)]


def test_txt_with_a_delimiter_is_read_as_a_table(tmp_path):
    path = write(tmp_path / "amazon_labelled.txt", "reviews\tsentiment\nGood case.\t1\nAwful.\t0\n")
    assert rows(read_records(path, csv_delimiter="\t")) == [
        ({"reviews": "Good case.", "sentiment": "1"}, 2), ({"reviews": "Awful.", "sentiment": "0"}, 3)]


CELL = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.lists(st.tuples(CELL, CELL), min_size=1, max_size=8), delimiter=st.sampled_from([",", "\t"]))
def test_csv_round_trip(tmp_path, table, delimiter):
    """Whatever csv.writer writes (quotes, delimiters, line breaks, U+0085), read_records reads back."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter)
    writer.writerow(["text", "label"])
    writer.writerows(table)
    path = tmp_path / ("d.csv" if delimiter == "," else "d.tsv")
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    records = read_records(path, csv_header=True)
    assert [(r.fields["text"], r.fields["label"]) for r in records] == [tuple(row) for row in table]
    assert [r.origin.row for r in records] == sorted({r.origin.row for r in records})


@pytest.mark.parametrize(
    ("first", "rest", "expected"),
    [
        (["text", "label"], [["Good case.", "1"]], True),
        (["query-id", "corpus-id", "score"], [["q1", "d1", "1"]], True),
        (["0", "to water", "0"], [["1", "glad", "1"]], False),  # numbers are data
        (["great movie", "positive"], [["awful", "negative"], ["fine", "positive"]], False),  # label repeats
        (["I loved it!", "pos"], [["bad", "neg"]], False),  # sentence punctuation
        (["a", "a"], [["x", "y"]], False),  # duplicate names
    ],
)
def test_header_detection(first, rest, expected):
    assert looks_like_header(first, rest) is expected


# --- Parquet, text, folders --------------------------------------------------------------------------------


def test_parquet_rows_are_numbered_from_one(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": [0, 1]}), path)
    assert rows(read_records(path)) == [({"text": "a", "label": 0}, 1), ({"text": "b", "label": 1}, 2)]


def test_text_file_split_by_file_line_and_paragraph(tmp_path):
    path = write(tmp_path / "t.txt", "First line.\nSecond line.\n\n\nThird, alone.\r\n")
    assert rows(read_records(path)) == [({"text": "First line.\nSecond line.\n\n\nThird, alone.\r\n"}, 1)]
    assert rows(read_records(path, text_split="line")) == [
        ({"text": "First line."}, 1), ({"text": "Second line."}, 2), ({"text": "Third, alone."}, 5)]
    assert rows(read_records(path, text_split="paragraph")) == [
        ({"text": "First line.\nSecond line."}, 1), ({"text": "Third, alone."}, 5)]


def test_folder_of_text_files_is_read_recursively_in_path_order(tmp_path):
    write(tmp_path / "docs" / "b.md", "# B\n")
    write(tmp_path / "docs" / "a" / "z.txt", "Z text")
    write(tmp_path / "docs" / "empty.txt", "")
    write(tmp_path / "docs" / ".hidden" / "x.txt", "hidden")
    write(tmp_path / "docs" / "notes.csv", "ignored,too\n")
    records = read_records(tmp_path / "docs")
    assert [(r.fields, r.origin) for r in records] == [
        ({"text": "Z text"}, Origin(str(tmp_path / "docs" / "a" / "z.txt"), 1)),
        ({"text": "# B\n"}, Origin(str(tmp_path / "docs" / "b.md"), 1)),
    ]


def test_saved_dataset_and_dataset_dict(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(str(tmp_path / "single"))
    DatasetDict({"train": Dataset.from_dict({"text": ["t"]}), "test": Dataset.from_dict({"text": ["u", "v"]})}).save_to_disk(
        str(tmp_path / "dict"))
    assert rows(read_records(tmp_path / "single")) == [({"text": "a"}, 1), ({"text": "b"}, 2)]
    test = read_records(tmp_path / "dict", split="test")
    assert [(r.fields, str(r.origin)) for r in test] == [
        ({"text": "u"}, f"{tmp_path / 'dict'}#test, row 1"), ({"text": "v"}, f"{tmp_path / 'dict'}#test, row 2")]
    assert rows(read_records(tmp_path / "dict")) == [
        ({"text": "t", "split": "train"}, 1), ({"text": "u", "split": "test"}, 1), ({"text": "v", "split": "test"}, 2)]
    with pytest.raises(DataError) as err:
        read_records(tmp_path / "dict", split="tset")
    assert "no such split" in str(err.value) and "'tset'" in str(err.value) and "train, test" in str(err.value)
    assert "Did you mean 'test'" in str(err.value)


def make_beir(folder: Path) -> Path:
    write(folder / "corpus.jsonl", '{"_id": "d1", "title": "Flu", "text": "Flu is a virus."}\n'
                                   '{"_id": "d2", "title": "Cold", "text": "Colds are mild."}\n')
    write(folder / "queries.jsonl", '{"_id": "q1", "text": "What is flu?"}\n')
    write(folder / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return folder


def test_beir_folder_reads_as_its_corpus(tmp_path):
    folder = make_beir(tmp_path / "beir")
    records = read_records(folder)
    assert [(r.fields, r.origin) for r in records] == [
        ({"_id": "d1", "title": "Flu", "text": "Flu is a virus."}, Origin(str(folder / "corpus.jsonl"), 1)),
        ({"_id": "d2", "title": "Cold", "text": "Colds are mild."}, Origin(str(folder / "corpus.jsonl"), 2)),
    ]


def test_read_beir_gives_queries_and_qrels(tmp_path):
    beir = read_beir(make_beir(tmp_path / "beir"))
    assert [q.fields for q in beir.queries] == [{"_id": "q1", "text": "What is flu?"}]
    assert beir.qrels == {"test": {"q1": {"d1": 1}}}


def test_beir_corpus_without_text_is_an_error(tmp_path):
    folder = tmp_path / "beir"
    write(folder / "corpus.jsonl", '{"_id": "d1", "body": "x"}\n')
    with pytest.raises(DataError) as err:
        read_beir(folder)
    assert "corpus.jsonl, row 1" in str(err.value) and "'text'" in str(err.value)


# --- bad input ----------------------------------------------------------------------------------------------


def test_malformed_json_line_names_the_line_and_the_json_error(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": "oops",}\n')
    with pytest.raises(DataError) as err:
        read_records(path)
    message = str(err.value)
    assert f"{path}, line 2: malformed JSON" in message
    assert "Expecting property name enclosed in double quotes at column 17" in message
    assert "expected one complete JSON object per line" in message


def test_json_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n["text", "label"]\n')
    with pytest.raises(DataError) as err:
        read_records(path)
    assert f"{path}, line 2: a line is not a JSON object" in str(err.value)
    assert "found an array" in str(err.value) and "expected a JSON object" in str(err.value)


def test_malformed_json_file_names_the_line(tmp_path):
    path = write(tmp_path / "bad.json", '[\n  {"a": 1},\n  {"a": 2\n]\n')
    with pytest.raises(DataError) as err:
        read_records(path)
    assert f"{path}, line 4: malformed JSON" in str(err.value) and "expected a JSON array of objects" in str(err.value)


def test_json_array_item_that_is_not_an_object(tmp_path):
    path = write(tmp_path / "bad.json", '[{"a": 1}, "b"]')
    with pytest.raises(DataError) as err:
        read_records(path)
    assert f"{path}, row 2" in str(err.value) and "found a string" in str(err.value)


@pytest.mark.parametrize(("content", "found"), [(b"", "found 0 bytes"), (b"\n  \n", "found only whitespace")])
def test_empty_file(tmp_path, content, found):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_records(path)
    assert f"{path}: the file is empty" in str(err.value) and found in str(err.value)
    assert "expected at least one row of data" in str(err.value)


def test_binary_file_names_the_byte_offset(tmp_path):
    path = tmp_path / "model.csv"
    path.write_bytes(b"text,label\nab\x00\x01\x02")
    with pytest.raises(DataError) as err:
        read_records(path)
    assert f"{path}, line 2: binary data, not text" in str(err.value)
    assert "a NUL byte at byte offset 13" in str(err.value) and "expected UTF-8 text" in str(err.value)


def test_non_utf8_file_names_the_byte_offset_and_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\u00e9,1\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        read_records(path)
    assert f"{path}, line 2: the file is not UTF-8 text" in str(err.value)
    assert "byte 0xe9 at byte offset 14" in str(err.value) and "expected UTF-8 text" in str(err.value)


def test_utf16_file_is_named_as_such(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\n".encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16"):
        read_records(path)


def test_utf8_bom_is_dropped(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftext,label\nGood.,1\n".encode("utf-8"))
    assert rows(read_records(path)) == [({"text": "Good.", "label": "1"}, 2)]


def test_missing_path_suggests_the_closest_name(tmp_path):
    write(tmp_path / "train.jsonl", '{"a": 1}\n')
    with pytest.raises(DataError) as err:
        read_records(tmp_path / "trian.jsonl")
    assert f"{tmp_path / 'trian.jsonl'}: no such file or folder" in str(err.value)
    assert f"Did you mean '{tmp_path / 'train.jsonl'}'" in str(err.value)


def test_unknown_extension_lists_the_supported_ones(tmp_path):
    path = write(tmp_path / "data.xlsx", "x")
    with pytest.raises(DataError) as err:
        read_records(path)
    assert f"{path}: unknown file type" in str(err.value) and "found the extension '.xlsx'" in str(err.value)
    for supported in (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", "BEIR"):
        assert supported in str(err.value)


def test_csv_row_with_the_wrong_number_of_fields(tmp_path):
    path = write(tmp_path / "d.tsv", 'text\tlabel\nfine\t1\n"unclosed\t0\nmore\t1\n')
    with pytest.raises(DataError) as err:
        read_records(path)
    assert f"{path}, line 3: wrong number of fields" in str(err.value)
    assert "found 1 fields; expected 2 fields (text, label)" in str(err.value) and "csv_quoting: none" in str(err.value)


def test_bad_gzip_and_bad_parquet(tmp_path):
    write(tmp_path / "d.jsonl.gz", "not gzip")
    write(tmp_path / "d.parquet", "not parquet")
    with pytest.raises(DataError, match="cannot decompress"):
        read_records(tmp_path / "d.jsonl.gz")
    with pytest.raises(DataError, match="cannot read the Parquet file"):
        read_records(tmp_path / "d.parquet")


def test_folder_without_data_files(tmp_path):
    write(tmp_path / "f" / "image.png", "x")
    with pytest.raises(DataError) as err:
        read_records(tmp_path / "f")
    assert "no data files in the folder" in str(err.value) and "image.png" in str(err.value)


@pytest.mark.parametrize(("option", "value"), [("csv_quoting", "sometimes"), ("text_split", "word"), ("csv_delimiter", ",;")])
def test_bad_read_options(tmp_path, option, value):
    path = write(tmp_path / "d.csv", "a,b\n")
    with pytest.raises(ConfigError) as err:
        read_records(path, **{option: value})
    assert f"(key {option!r})" in str(err.value) and repr(value) in str(err.value)
