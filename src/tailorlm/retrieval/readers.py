"""Turn one file into text with its structure: the title, headings (Markdown, HTML, DOCX) and page offsets (PDF).

Each reader returns an `Extracted` whose offsets point into its own `text`, or raises `Unreadable`, a DataError
whose `reason` is the short form reported when a file inside a folder is skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from tailorlm.data.loaders import decode_text
from tailorlm.errors import DataError

NO_TEXT = "no extractable text (scanned? run OCR first)"
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_NOT_PARAGRAPH = re.compile(r"^\s*$|^ {0,3}([-*+>#|]|\d+[.)])|^ {4}")
_FRONT_TITLE = re.compile(r"^title:[ \t]*[\"']?(.*?)[\"']?[ \t]*$", re.MULTILINE)
_CHARSET = re.compile(rb"<meta[^>]+charset=[\"']?([A-Za-z0-9_.:-]+)", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


class Unreadable(DataError):
    """A file that gives no text; `reason` is what a skipped file is reported with ("encrypted", "empty document")."""

    def __init__(self, reason: str, *, where: str, found: str | None = None, expected: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(reason, where=where, found=found, expected=expected, hint=hint)
        self.reason = reason


@dataclass
class Extracted:
    """The text of one file and its structure, with offsets into `text`."""

    text: str
    title: str | None = None
    headings: list[tuple[int, str]] = field(default_factory=list)
    pages: list[tuple[int, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def text_of(raw: bytes, where: str) -> str:
    """UTF-8 text of a file (BOM dropped); Unreadable for an empty file, DataError naming the byte offset otherwise."""
    if not raw.strip():
        raise Unreadable("empty document", where=where, found="0 bytes" if not raw else "only whitespace",
                         expected="some text")
    return decode_text(raw, where=where)


def read_plain(raw: bytes, where: str) -> Extracted:
    """A .txt file, exactly as written."""
    return Extracted(text_of(raw, where))


def read_markdown(raw: bytes, where: str) -> Extracted:
    """A Markdown file, kept as written; headings from `#` lines and `===`/`---` underlines, outside code fences.

    The title is front matter's `title:` or else the first level-1 heading.
    """
    text = text_of(raw, where)
    title, skip_until = None, 0
    if text.startswith("---\n") and (end := text.find("\n---\n", 4)) > 0:
        skip_until = end + 5
        if match := _FRONT_TITLE.search(text, 4, end):
            title = match.group(1).strip() or None
    headings: list[tuple[int, str, int]] = []  # (offset, text, level)
    fence, offset, previous = "", 0, None  # previous: (offset, line) of a paragraph line that a setext line may underline
    for line in text.split("\n"):
        start, offset = offset, offset + len(line) + 1
        if start < skip_until:
            continue
        line = line.rstrip("\r")
        if match := _FENCE.match(line):
            marker = match.group(1)
            if not fence:
                fence = marker[0] * len(marker)
            elif marker.startswith(fence):
                fence = ""
            previous = None
            continue
        if fence:
            continue
        if (match := _ATX.match(line)) and (heading := (match.group(2) or "").strip()):
            headings.append((start + line.index(heading), heading, len(match.group(1))))
            previous = None
        elif (match := _SETEXT.match(line)) and previous is not None:
            headings.append((previous[0] + len(previous[1]) - len(previous[1].lstrip()), previous[1].strip(),
                             1 if match.group(1)[0] == "=" else 2))
            previous = None
        else:
            previous = None if _NOT_PARAGRAPH.match(line) else (start, line)
    if title is None:
        title = next((heading for _, heading, level in headings if level == 1), None)
    return Extracted(text, title, [(offset, heading) for offset, heading, _ in headings])


def read_html(raw: bytes, where: str) -> Extracted:
    """An HTML page's visible text (script, style and templates dropped), its <title> and its h1-h6 headings.

    Bytes that are not UTF-8 are decoded with the page's declared `<meta charset>` when it names one.
    """
    try:
        source = text_of(raw, where)
    except Unreadable:
        raise
    except DataError:
        declared = _CHARSET.search(raw[:4096])
        try:
            source = raw.decode(declared.group(1).decode("ascii")) if declared else None
        except (LookupError, UnicodeDecodeError):
            source = None
        if source is None:
            raise
    parser = _HtmlText()
    parser.feed(source)
    parser.close()
    text = "".join(parser.parts)
    if not text.strip():
        raise Unreadable("empty document", where=where, found="no visible text in the page", expected="some text")
    title = _SPACES.sub(" ", "".join(parser.title_parts)).strip() or None
    if title is None:
        title = next((heading for _, heading, level in parser.headings if level == 1), None)
    return Extracted(text, title, [(offset, heading) for offset, heading, _ in parser.headings])


class _HtmlText(HTMLParser):
    """Collect visible text block by block: whitespace collapsed as a browser does, blocks on their own lines."""

    SKIP = frozenset({"script", "style", "noscript", "template", "svg"})
    LINE_BLOCKS = frozenset({"li", "tr", "dt", "dd", "option", "caption", "figcaption"})
    BLOCKS = frozenset({"p", "div", "section", "article", "main", "header", "footer", "nav", "aside", "ul", "ol",
                        "dl", "table", "thead", "tbody", "tfoot", "blockquote", "form", "fieldset", "figure",
                        "address", "hr", "body", "details", "summary"}) | LINE_BLOCKS
    HEADINGS = {f"h{n}": n for n in range(1, 7)}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.length = 0
        self.pending = 0  # newlines owed before the next text: 1 after a line-level block, 2 after a paragraph
        self.buffer: list[str] = []
        self.skip = 0
        self.pre = 0
        self.in_title = False
        self.title_parts: list[str] = []
        self.headings: list[tuple[int, str, int]] = []
        self.heading_start: int | None = None  # inside a heading: -1 until its text starts, then its offset

    def handle_starttag(self, tag: str, attrs: list) -> None:
        """Open a block (flushing the text before it), a skipped element or the title."""
        if tag in self.SKIP:
            self.skip += 1
            return
        if tag == "title":
            self.in_title = True
        elif tag == "br":
            self._flush()
            self.pending = max(self.pending, 1)
        elif tag in ("td", "th"):
            self.buffer.append(" ")
        elif tag in self.HEADINGS or tag == "pre" or tag in self.BLOCKS:
            self._flush()
            self.pending = max(self.pending, 1 if tag in self.LINE_BLOCKS else 2)
            self.pre += tag == "pre"
            if tag in self.HEADINGS:
                self.heading_start = -1  # set to the offset of the heading's first text

    def handle_endtag(self, tag: str) -> None:
        """Close a block: its text becomes a line, a paragraph or a heading."""
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag == "title":
            self.in_title = False
        elif tag in self.HEADINGS:
            self._flush()
            if self.heading_start is not None and self.heading_start >= 0:
                text = _SPACES.sub(" ", "".join(self.parts)[self.heading_start:])
                self.headings.append((self.heading_start, text, self.HEADINGS[tag]))
            self.heading_start = None
            self.pending = 2
        elif tag == "pre" or tag in self.BLOCKS:
            self._flush()
            self.pre = max(0, self.pre - (tag == "pre"))
            self.pending = max(self.pending, 1 if tag in self.LINE_BLOCKS else 2)

    def handle_data(self, data: str) -> None:
        """Keep visible text; the title's text goes to the title, not the body."""
        if self.in_title:
            self.title_parts.append(data)
        elif not self.skip:
            self.buffer.append(data)

    def close(self) -> None:
        """Flush the text after the last block."""
        super().close()
        self._flush()

    def _flush(self) -> None:
        """Write the buffered text as one block."""
        raw = "".join(self.buffer)
        self.buffer = []
        text = raw.strip("\n").rstrip() if self.pre else _SPACES.sub(" ", raw).strip()
        if not text:
            return None
        if self.parts:
            separator = "\n" * self.pending if self.pending else " "
            self.parts.append(separator)
            self.length += len(separator)
        self.parts.append(text)
        if self.heading_start == -1:
            self.heading_start = self.length
        self.length, self.pending = self.length + len(text), 0


def read_pdf(path: Path, where: str) -> Extracted:
    """A PDF's text page by page (pages joined by a blank line); Unreadable when encrypted or without any text."""
    from pypdf import PasswordType, PdfReader

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise Unreadable("encrypted", where=where, found="a password-protected PDF", expected="a PDF that opens without a password",
                             hint="Decrypt it first, e.g. qpdf --decrypt --password=PASSWORD in.pdf out.pdf")
        page_texts = [(page.extract_text() or "").strip() for page in reader.pages]
        info_title = (reader.metadata or {}).get("/Title")
    except Unreadable:
        raise
    except Exception as err:  # noqa: BLE001 - pypdf raises many types for damaged files; the user needs one message
        raise Unreadable("not a readable PDF", where=where, found=f"{type(err).__name__}: {err}",
                         expected="a PDF file") from None
    if not any(page_texts):
        raise Unreadable(NO_TEXT, where=where, found=f"{len(page_texts)} pages without a text layer",
                         expected="a PDF with a text layer", hint="Run OCR first, e.g. ocrmypdf in.pdf out.pdf")
    parts, pages, offset = [], [], 0
    for number, page_text in enumerate(page_texts, start=1):
        if page_text:
            offset += 2 if parts else 0
            pages.append((number, offset))
            parts.append(page_text)
            offset += len(page_text)
    empty = [str(n) for n, page_text in enumerate(page_texts, start=1) if not page_text]
    warnings = [f"{where}: page{'s' if len(empty) > 1 else ''} {', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''} "
                f"of {len(page_texts)} {'have' if len(empty) > 1 else 'has'} {NO_TEXT}"] if empty else []
    title = str(info_title).strip() if isinstance(info_title, str) and info_title.strip() else None
    return Extracted("\n\n".join(parts), title, [], pages, warnings)


def read_docx(path: Path, where: str) -> Extracted:
    """A Word document's paragraphs and table rows in order; headings from its Heading and Title styles."""
    import docx
    from docx.table import Table

    try:
        document = docx.Document(str(path))
        blocks: list[tuple[str, str | None]] = []  # (text, style name of a heading or None)
        for item in document.iter_inner_content():
            if isinstance(item, Table):
                rows = ["\t".join(_unique_cells(cell.text.strip() for cell in row.cells)) for row in item.rows]
                if text := "\n".join(row for row in rows if row.strip()):
                    blocks.append((text, None))
            elif text := item.text.strip():
                style = item.style.name if item.style is not None else ""
                blocks.append((text, style if style.startswith("Heading") or style == "Title" else None))
        core_title = (document.core_properties.title or "").strip()
    except Exception as err:  # noqa: BLE001 - python-docx and zipfile raise many types for damaged files
        raise Unreadable("not a readable DOCX file", where=where, found=f"{type(err).__name__}: {err}",
                         expected="a Word .docx file") from None
    if not blocks:
        raise Unreadable("empty document", where=where, found="no paragraphs with text", expected="some text")
    headings, offset = [], 0
    for text, style in blocks:
        if style:
            headings.append((offset, text))
        offset += len(text) + 2
    title = core_title or next((text for text, style in blocks if style == "Title"), None)
    return Extracted("\n\n".join(text for text, _ in blocks), title, headings)


def _unique_cells(cells: object) -> list[str]:
    """Table cells with a horizontally merged cell (python-docx repeats it once per grid column) kept once."""
    kept: list[str] = []
    for cell in cells:  # type: ignore[attr-defined]
        if not kept or cell != kept[-1]:
            kept.append(cell)
    return kept
