"""Every bad-input case of issue 2 ends in a one-paragraph error through the CLI: file, row, key, found, expected."""

from __future__ import annotations

import pytest

from tailorlm.cli import main


def write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


CASES = {
    "malformed_json_line": (
        "bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": \n',
        [], ["bad.jsonl", "line 2", "JSON"],
    ),
    "misspelled_column": (
        "cols.jsonl", '{"instruction": "Say hi", "outptu": "hi"}\n',
        ["--format", "alpaca"], ["cols.jsonl", "output", "outptu"],
    ),
    "wrong_type": (
        "types.jsonl", '{"messages": "not a list"}\n',
        [], ["types.jsonl", "row 1", "messages", "list"],
    ),
    "empty_file": ("empty.jsonl", "", [], ["empty.jsonl", "empty"]),
    "binary_file": ("blob.jsonl", b"\x00\x01\x02\xff\xfe" * 20, [], ["blob.jsonl"]),
    "not_utf8": ("latin.csv", "text,label\ncaf\xe9,1\nthe,0\n".encode("latin-1"), [], ["latin.csv", "UTF-8"]),
    "unknown_format": ("ok.jsonl", '{"text": "a"}\n', ["--format", "alpacca"], ["alpacca", "alpaca"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_paragraph_without_traceback(name, tmp_path, tiny_llama_dir, capsys):
    filename, content, flags, needles = CASES[name]
    path = write(tmp_path / filename, content)
    code = main(["data", "check", str(path), "--model", str(tiny_llama_dir), *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: ")
    for needle in needles:
        assert needle.lower() in err.lower(), (needle, err)


def test_one_class_is_a_report_error_with_exit_code_1(tmp_path, tiny_llama_dir, capsys):
    path = write(tmp_path / "one.csv", "text,label\ngood,pos\nfine,pos\ngreat,pos\n")
    code = main(["data", "check", str(path), "--model", str(tiny_llama_dir), "--json"])
    import json

    report = json.loads(capsys.readouterr().out)
    assert code == 1
    errors = [f for f in report["findings"] if f["level"] == "error"]
    assert [f["code"] for f in errors] == ["single_class"] and "'pos'" in errors[0]["message"]


def test_missing_path(tmp_path, capsys):
    code = main(["data", "check", str(tmp_path / "nope.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "nope.jsonl" in err and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    path = write(tmp_path / "empty.jsonl", "")
    from tailorlm.errors import DataError

    with pytest.raises(DataError):
        main(["--debug", "data", "check", str(path)])


def test_unknown_model_name_lists_the_packs(capsys):
    code = main(["models", "info", "smollm3"])
    err = capsys.readouterr().err
    assert code == 2 and "smollm2-135m-instruct" in err and "minilm-l6" in err
