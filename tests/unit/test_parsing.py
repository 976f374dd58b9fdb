"""Reading answers out of free model text: labels, numbers, programs, SQuAD normalisation."""

from __future__ import annotations

import pytest

from tailorlm.tasks.parsing import extract_code, normalize_answer, numbers_equal, parse_label, parse_number

SENTIMENT = {"0": "bearish", "1": "bullish", "2": "neutral"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("bullish", "1"),
        ("Bullish", "1"),
        ("BEARISH", "0"),
        ("Answer: Bullish.", "1"),
        ("  **Neutral**\n", "2"),
        ("The sentiment of this tweet is bearish for investors.", "0"),
        ("Bullish. The company beat estimates.", "1"),
        # The first label mentioned wins when the model chooses and then explains.
        ("bullish, not bearish", "1"),
        ("Neutral: the news is neither good nor bad; some might read it as bearish.", "2"),
        # Echoed options are skipped, the chosen label after them counts.
        ("Options: bearish, bullish, neutral.\nAnswer: neutral", "2"),
        ("Bullish and bearish signals cancel out, so overall neutral.", "2"),
        # An answer that is exactly a label value.
        ("1", "1"),
        ("Label: 2", "2"),
    ],
)
def test_parse_label_finds_the_chosen_label(text: str, value: str) -> None:
    assert parse_label(text, SENTIMENT) == value


@pytest.mark.parametrize(
    "text",
    ["", "I cannot tell.", "bullish or bearish", "Bullish/Bearish", "bearish, bullish, neutral", "bullishness", "7"],
)
def test_parse_label_refuses_no_label_or_only_the_options(text: str) -> None:
    assert parse_label(text, SENTIMENT) is None


def test_parse_label_prefers_the_longer_overlapping_label_and_accepts_a_list() -> None:
    labels = ["entailment", "not_entailment"]
    assert parse_label("Not entailment.", labels) == "not_entailment"
    assert parse_label("not-entailment", labels) == "not_entailment"
    assert parse_label("This is an entailment.", labels) == "entailment"


def test_parse_label_repeated_label_is_not_ambiguous() -> None:
    assert parse_label("bullish, bullish!", SENTIMENT) == "1"


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("Natalia sold 48/2 = 24 clips in May.\n48 + 24 = 72\n#### 72", "72"),
        ("#### 1,000", "1000"),
        ("The answer is 1,234.5", "1234.5"),
        ("The answer is $12 because 3 * 4 = 12 and 5 more", "12"),
        ("So the total is \\boxed{18} dollars, 2 each", "18"),
        ("She has -3.50 left", "-3.5"),
        ("1000.0", "1000"),
        ("it costs 5 dollars and 7 cents", "7"),
        ("5-3=2", "2"),
        (".5 of them", "0.5"),
    ],
)
def test_parse_number(text: str, number: str) -> None:
    assert parse_number(text) == number


def test_parse_number_without_a_number() -> None:
    assert parse_number("no idea") is None
    assert parse_number("") is None


def test_numbers_equal_compares_values() -> None:
    assert numbers_equal("1,000", "1000.0")
    assert numbers_equal("0.5", ".5")
    assert not numbers_equal("1000", "1001")
    assert not numbers_equal(None, "1")


def test_normalize_answer_is_squad_normalisation() -> None:
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("An apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("  ") == ""


PROMPT = '''from typing import List


def helper(x: int) -> int:
    return x * 2


def double_all(values: List[int]) -> List[int]:
    """Double every value.
    >>> double_all([1, 2])
    [2, 4]
    """
'''


def test_extract_code_continuation_gets_the_prompt_prepended() -> None:
    completion = "    return [helper(v) for v in values]\n"
    code = extract_code(completion, PROMPT)
    assert code == PROMPT + completion
    namespace: dict = {}
    exec(code, namespace)
    assert namespace["double_all"]([1, 2]) == [2, 4]


def test_extract_code_full_function_in_a_fence_gets_the_prompt_preamble() -> None:
    answer = (
        "Here is my solution:\n\n```python\ndef double_all(values):\n    return [helper(v) for v in values]\n```\n\n"
        "Example:\n```python\nprint(double_all([3]))\n```\n"
    )
    code = extract_code(answer, PROMPT)
    assert code.startswith("from typing import List")
    assert code.endswith("def double_all(values):\n    return [helper(v) for v in values]\n")
    assert "print(" not in code
    namespace: dict = {}
    exec(code, namespace)
    assert namespace["double_all"]([1, 2]) == [2, 4]


def test_extract_code_fenced_body_at_column_zero_is_indented_under_the_signature() -> None:
    code = extract_code("```\nreturn [2 * v for v in values]\n```", PROMPT)
    namespace: dict = {}
    exec(code, namespace)
    assert namespace["double_all"]([5]) == [10]


def test_extract_code_unclosed_fence_and_no_prompt() -> None:
    assert extract_code("```python\ndef f():\n    return 1\n") == "def f():\n    return 1\n"
    assert extract_code("```py\nx = 1\n```\nDone.") == "x = 1\n"


def test_extract_code_drops_leading_prose_without_a_fence() -> None:
    assert extract_code("Sure! Here it is.\ndef f(x):\n    return x\n") == "def f(x):\n    return x\n"
    assert extract_code("x = 1\ndef f():\n    return x\n") == "x = 1\ndef f():\n    return x\n"
