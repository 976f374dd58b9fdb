"""Read answers out of free model text: a label, a number, a program; and SQuAD's answer normalisation."""

from __future__ import annotations

import re
import string
import textwrap
from decimal import Decimal, InvalidOperation

# Between two label mentions, only these make the pair an enumeration ("bullish or bearish", "bearish, bullish,
# neutral"): the model is listing the options, not choosing one.
_ENUMERATION_GAP = re.compile(r"[\s,;:/|*\"'`()\[\]-]*(?:(?:or|and|nor|vs\.?)[\s,;:/|*\"'`()\[\]-]*)?", re.IGNORECASE)
_PREFIX = re.compile(r"^\s*[\w ]{1,30}:\s*")  # "Answer: ", "Sentiment label: "
_EDGE_PUNCTUATION = string.punctuation + string.whitespace + "“”‘’"

# A number as people write it: optional sign, thousands separators, decimals ("-1,234.50", "3", ".5").
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])[-+]?\.\d+")
_GSM8K_MARKER = re.compile(r"####\s*(.*)")
_ANSWER_IS = re.compile(r"answer\s*(?:is\s*:?|:)\s*\**\$?\s*", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^}]*)\}")

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CODE_START = re.compile(r"^(?:async\s+def|def|class|import|from|@)\b", re.MULTILINE)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces.

    >>> normalize_answer("The  Eiffel Tower!")
    'eiffel tower'
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def parse_label(text: str, labels: dict[str, str] | list[str]) -> str | None:
    """The label VALUE a free answer names, or None when it names none or only lists the options.

    `labels` maps each value in the data to the word the model says (a list means value == word). Matching ignores
    case, punctuation and markdown, and finds a label word anywhere ("Answer: **Bullish**." -> the bullish value).
    The rule when several labels appear: mentions that are part of an enumeration (two or more different labels
    separated only by commas, slashes, "or", "and": "bullish or bearish", "bearish, bullish, neutral") are the
    model listing the options and are skipped; of the remaining mentions the first one wins ("bullish, not
    bearish" -> bullish; "Options: bearish, bullish, neutral. Answer: neutral" -> neutral). When every mention is
    in an enumeration the answer is ambiguous and None is returned. Overlapping words prefer the longer one
    ("not entailment" over "entailment"). When no word is found, an answer that is exactly a value ("2",
    "Label: 2") gives that value.

    >>> parse_label("Answer: Bullish.", {"0": "bearish", "1": "bullish"})
    '1'
    >>> parse_label("bullish or bearish", {"0": "bearish", "1": "bullish"}) is None
    True
    """
    words = {str(v): str(v) for v in labels} if isinstance(labels, (list, tuple)) else dict(labels)
    mentions = _label_mentions(text, words)
    if mentions:
        in_enumeration = [False] * len(mentions)
        for i in range(len(mentions) - 1):
            (_, end, value), (start, _, next_value) = mentions[i], mentions[i + 1]
            if value != next_value and _ENUMERATION_GAP.fullmatch(text[end:start]):
                in_enumeration[i] = in_enumeration[i + 1] = True
        chosen = [value for (_, _, value), listed in zip(mentions, in_enumeration) if not listed]
        return chosen[0] if chosen else None
    bare = _PREFIX.sub("", text.strip(_EDGE_PUNCTUATION), count=1).strip(_EDGE_PUNCTUATION)
    return bare if bare in words else None


def _label_mentions(text: str, words: dict[str, str]) -> list[tuple[int, int, str]]:
    """(start, end, value) of every label word in `text`, in order, overlaps resolved in favour of the longer."""
    found = []
    for value, word in words.items():
        parts = [re.escape(part) for part in re.split(r"[\s_-]+", str(word).strip()) if part]
        if not parts:
            continue
        pattern = re.compile(r"(?<![^\W_])" + r"[\s_-]+".join(parts) + r"(?![^\W_])", re.IGNORECASE)
        found += [(m.start(), m.end(), value) for m in pattern.finditer(text)]
    found.sort(key=lambda m: (m[0], -(m[1] - m[0])))
    mentions: list[tuple[int, int, str]] = []
    for mention in found:
        if not mentions or mention[0] >= mentions[-1][1]:
            mentions.append(mention)
    return mentions


def parse_number(text: str) -> str | None:
    """The final numeric answer in `text`, canonical ("1,234.50" -> "1234.5", "1000.0" -> "1000"), or None.

    Where to look, in order: after the last GSM8K marker "#### "; inside the last LaTeX \\boxed{}; after the last
    "answer is" / "answer:"; otherwise the last number in the whole text.

    >>> parse_number("She pays 3 * $4 = $12.\\n#### 12")
    '12'
    >>> parse_number("The answer is 1,234.5")
    '1234.5'
    """
    for pattern in (_GSM8K_MARKER, _BOXED):
        hits = pattern.findall(text)
        if hits and (number := _last_number(hits[-1])) is not None:
            return number
    hits = list(_ANSWER_IS.finditer(text))
    if hits and (m := _NUMBER.match(text, hits[-1].end())) is not None:
        return _canonical(m.group())
    return _last_number(text)


def _last_number(text: str) -> str | None:
    """The last number written in `text`, canonical."""
    numbers = _NUMBER.findall(text)
    return _canonical(numbers[-1]) if numbers else None


def _canonical(number: str) -> str | None:
    """A number without separators, sign '+' or trailing zeros after the point."""
    try:
        value = Decimal(number.replace(",", ""))
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Whether two parsed numbers are the same value ("1,000" == "1000.0"), to within a relative 1e-6."""
    if a is None or b is None:
        return False
    try:
        x, y = Decimal(a.replace(",", "")), Decimal(b.replace(",", ""))
    except InvalidOperation:
        return False
    return abs(x - y) <= Decimal("1e-6") * max(abs(x), abs(y), Decimal(1))


def entry_point(prompt: str) -> str | None:
    """The function a code prompt asks for: the last top-level `def` in it."""
    names = re.findall(r"^(?:async\s+)?def\s+(\w+)\s*\(", prompt, re.MULTILINE)
    return names[-1] if names else None


def extract_code(text: str, prompt: str = "", *, entry: str | None = None) -> str:
    """The program in a model's answer, completed with the prompt's code where the answer only continues it.

    Code comes from the first ```python (or ```py, or unlabelled) fence, or the first fence that defines the entry
    function; an unclosed fence runs to the end (generation stopped early). Without a fence the raw text is the
    code, less leading prose before the first `def`/`import`/`class` line. With a code `prompt` (HumanEval: imports,
    helpers and the signature with its docstring), the entry function is `entry` or the prompt's last `def`:
      - an answer that does not define it continues the prompt, so the prompt is prepended (a body written at
        column 0 inside a fence is indented under the signature first);
      - an answer that defines it gets the prompt's text before that `def` (imports, helper functions) prepended,
        so helpers the answer relies on exist; its own definitions come later and win.
    """
    entry = entry or entry_point(prompt)
    fenced = _FENCE.findall(text)
    if fenced:
        python = [body for lang, body in fenced if lang.lower() in ("python", "py", "python3", "")] or [fenced[0][1]]
        code = next((body for body in python if entry and _defines(body, entry)), python[0])
    else:
        code = _drop_leading_prose(text)
    if not entry or not prompt:
        return code
    if _defines(code, entry):
        head = re.search(rf"^(?:async\s+)?def\s+{re.escape(entry)}\s*\(", prompt, re.MULTILINE)
        preamble = prompt[: head.start()] if head else ""
        return preamble + code if preamble.strip() else code
    if fenced:
        first = next((line for line in code.splitlines() if line.strip()), "")
        if first and not first[0].isspace():
            code = textwrap.indent(code, "    ")
        return prompt.rstrip("\n") + "\n" + code
    return prompt + code


def _defines(code: str, name: str) -> bool:
    """Whether `code` has a top-level definition of function `name`."""
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def _drop_leading_prose(text: str) -> str:
    """`text` from its first code-looking line when what comes before it is prose, not Python."""
    start = _CODE_START.search(text)
    if start is None or start.start() == 0:
        return text
    head = text[: start.start()]
    if head.strip() and not head[:1].isspace() and not _compiles(head):
        return text[start.start() :]
    return text


def _compiles(source: str) -> bool:
    """Whether `source` is valid Python."""
    try:
        compile(source, "<answer>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True
