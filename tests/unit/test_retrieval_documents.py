"""Reading documents for retrieval: each file type's text and structure, skips with reasons, and bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tailorlm.errors import DataError
from tailorlm.retrieval.documents import Document, document_files, read_documents
from tailorlm.retrieval.readers import NO_TEXT


def make_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF, written by hand: one Helvetica text line per string; an empty list is a page without text."""
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, lines in enumerate(pages):
        ops = ["BT", "/F1 12 Tf", "72 720 Td"]
        for j, line in enumerate(lines):
            ops += (["0 -16 Td"] if j else []) + ["(" + line.replace("(", "\\(").replace(")", "\\)") + ") Tj"]
        stream = "\n".join(ops + ["ET"]).encode() if lines else b""
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                       f"/Contents {5 + 2 * i} 0 R >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1) + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def encrypted_pdf(path: Path, user_password: str) -> Path:
    """A copy of a small PDF encrypted with pypdf (AES-256); an empty user password opens without asking."""
    from pypdf import PdfReader, PdfWriter

    plain = path.with_suffix(".plain.pdf")
    plain.write_bytes(make_pdf([["Secret text."]]))
    writer = PdfWriter(clone_from=PdfReader(plain))
    writer.encrypt(user_password, owner_password="owner", algorithm="AES-256")
    writer.write(path)
    plain.unlink()
    return path


def make_docx(path: Path) -> Path:
    """A Word file with a title, two headings, paragraphs, an empty paragraph and a table."""
    import docx

    document = docx.Document()
    document.add_heading("Care Guide", level=0)  # the Title style
    document.add_heading("Symptoms", level=1)
    document.add_paragraph("Fever and cough are common.")
    document.add_paragraph("   ")
    document.add_heading("Treatment", level=2)
    document.add_paragraph("Rest and fluids help.")
    table = document.add_table(rows=2, cols=2)
    for r, row in enumerate([("Drug", "Dose"), ("Paracetamol", "500 mg")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    document.save(str(path))
    return path


def test_text_file_is_read_exactly_with_path_id_and_byte_hash(tmp_path: Path) -> None:
    raw = "First line.\r\nSecond line with café.\n".encode("utf-8")
    (tmp_path / "note.txt").write_bytes(b"\xef\xbb\xbf" + raw)
    doc = read_documents(tmp_path / "note.txt").documents[0]
    assert doc.text == "First line.\r\nSecond line with café.\n"
    assert (doc.doc_id, doc.path, doc.title, doc.pages, doc.headings) == (str(tmp_path / "note.txt"),) * 2 + (None, [], [])
    assert doc.content_hash == hashlib.sha256(b"\xef\xbb\xbf" + raw).hexdigest()


def test_markdown_headings_title_and_code_fences(tmp_path: Path) -> None:
    text = "# Diabetes\n\nIntro text.\n\n```\n# not a heading\n```\n\n## Type 2 ##\nMore.\n\nRisks\n-----\nEnd.\n"
    (tmp_path / "guide.md").write_text(text)
    doc = read_documents(tmp_path / "guide.md").documents[0]
    assert doc.text == text
    assert doc.title == "Diabetes"
    assert doc.headings == [(2, "Diabetes"), (text.index("Type 2"), "Type 2"), (text.index("Risks"), "Risks")]


def test_markdown_front_matter_title(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("---\ntitle: \"Asthma care\"\n---\n## Triggers\nDust.\n")
    doc = read_documents(tmp_path / "a.md").documents[0]
    assert doc.title == "Asthma care"
    assert doc.headings == [(doc.text.index("Triggers"), "Triggers")]


def test_html_visible_text_title_and_headings(tmp_path: Path) -> None:
    page = ("<html><head><title>My  Page</title><style>p {color: red}</style>"
            "<script>var hidden = 'no';</script></head>\n<body>\n<h1>Main   heading</h1>\n"
            "<p>First <b>bold</b>\nparagraph.</p><ul><li>one</li><li>two</li></ul>"
            "<noscript>enable js</noscript><h2>Sub<br>title</h2><p>Last &amp; final.<br>New line</p>\n</body></html>")
    (tmp_path / "page.html").write_text(page)
    doc = read_documents(tmp_path / "page.html").documents[0]
    assert doc.text == "Main heading\n\nFirst bold paragraph.\n\none\ntwo\n\nSub\ntitle\n\nLast & final.\nNew line"
    assert doc.title == "My Page"
    assert doc.headings == [(0, "Main heading"), (doc.text.index("Sub"), "Sub title")]


def test_html_in_a_declared_charset(tmp_path: Path) -> None:
    page = '<html><head><meta charset="latin-1"></head><body><p>Café</p></body></html>'.encode("latin-1")
    (tmp_path / "old.htm").write_bytes(page)
    doc = read_documents(tmp_path / "old.htm").documents[0]
    assert (doc.text, doc.title) == ("Café", None)


def test_pdf_pages_and_offsets_with_a_page_without_text(tmp_path: Path) -> None:
    (tmp_path / "r.pdf").write_bytes(make_pdf([["Hello page one.", "Second line here."], [], ["Page three (final)."]]))
    batch = read_documents(tmp_path / "r.pdf")
    doc = batch.documents[0]
    assert doc.text == "Hello page one.\nSecond line here.\n\nPage three (final)."
    assert doc.pages == [(1, 0), (3, doc.text.index("Page three"))]
    assert batch.warnings == [f"{tmp_path / 'r.pdf'}: page 2 of 3 has {NO_TEXT}"]


def test_pdf_with_an_empty_user_password_opens(tmp_path: Path) -> None:
    doc = read_documents(encrypted_pdf(tmp_path / "owner.pdf", "")).documents[0]
    assert (doc.text, doc.pages) == ("Secret text.", [(1, 0)])


def test_encrypted_pdf_is_an_error_when_named_and_a_skip_in_a_folder(tmp_path: Path) -> None:
    encrypted_pdf(tmp_path / "locked.pdf", "secret")
    (tmp_path / "ok.txt").write_text("Readable.")
    with pytest.raises(DataError, match=r"locked\.pdf: encrypted.*qpdf --decrypt"):
        read_documents(tmp_path / "locked.pdf")
    batch = read_documents(tmp_path)
    assert [d.text for d in batch.documents] == ["Readable."]
    assert batch.skipped == [(str(tmp_path / "locked.pdf"), "encrypted")]


def test_image_only_and_damaged_pdfs_are_skipped_with_reasons(tmp_path: Path) -> None:
    (tmp_path / "scan.pdf").write_bytes(make_pdf([[], []]))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf")
    (tmp_path / "z.txt").write_text("text")
    batch = read_documents(tmp_path)
    assert batch.skipped[0][0] == str(tmp_path / "broken.pdf")
    assert batch.skipped[0][1].startswith("not a readable PDF")
    assert batch.skipped[1] == (str(tmp_path / "scan.pdf"), "no extractable text (scanned? run OCR first)")
    with pytest.raises(DataError, match=r"scan\.pdf: no extractable text.*2 pages without a text layer.*ocrmypdf"):
        read_documents(tmp_path / "scan.pdf")


def test_docx_paragraphs_headings_title_and_tables(tmp_path: Path) -> None:
    doc = read_documents(make_docx(tmp_path / "guide.docx")).documents[0]
    assert doc.text == ("Care Guide\n\nSymptoms\n\nFever and cough are common.\n\nTreatment\n\nRest and fluids help."
                        "\n\nDrug\tDose\nParacetamol\t500 mg")
    assert doc.title == "Care Guide"
    assert doc.headings == [(0, "Care Guide"), (12, "Symptoms"), (doc.text.index("Treatment"), "Treatment")]


def test_damaged_docx_is_an_error_that_names_it(tmp_path: Path) -> None:
    (tmp_path / "bad.docx").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DataError, match=r"bad\.docx: not a readable DOCX file"):
        read_documents(tmp_path / "bad.docx")


def test_jsonl_rows_become_documents_with_metadata(tmp_path: Path) -> None:
    rows = [{"text": "Aspirin thins blood.", "title": "Aspirin", "source": "FDA", "year": 2020},
            {"text": "  ", "source": "x"},
            {"text": "Ibuprofen eases pain.", "source": "NIH"}]
    path = tmp_path / "faq.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    batch = read_documents(path)
    first, second = batch.documents
    assert (first.doc_id, first.text, first.title, first.metadata) == (f"{path}#1", "Aspirin thins blood.", "Aspirin", {"source": "FDA", "year": 2020})
    assert (second.doc_id, second.title, second.metadata) == (f"{path}#3", None, {"source": "NIH"})
    assert batch.skipped == [(f"{path}#2", "empty text")]
    assert first.content_hash != second.content_hash


def test_csv_text_column_and_id_column(tmp_path: Path) -> None:
    path = tmp_path / "notes.csv"
    path.write_text('key,body,author\nn1,"Line one, with a comma.",Ann\nn2,Second note.,Bob\n')
    batch = read_documents(path, text_column="body", id_column="key")
    assert [(d.doc_id, d.text, d.metadata) for d in batch.documents] == [
        ("n1", "Line one, with a comma.", {"author": "Ann"}), ("n2", "Second note.", {"author": "Bob"})]


def test_missing_text_column_lists_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "notes.csv"
    path.write_text("key,body\nn1,hello\n")
    with pytest.raises(DataError, match=r"notes\.csv, row 2: no such column \(key 'text'\): found columns key, body.*--text-column"):
        read_documents(path)


def test_beir_folder_reads_only_its_corpus(tmp_path: Path) -> None:
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(
        json.dumps({"_id": "d1", "title": "Flu", "text": "Flu is viral.", "url": "http://x"}) + "\n"
        + json.dumps({"_id": "d2", "title": "", "text": "Colds are mild."}) + "\n")
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "what is flu"}) + "\n")
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    for source in (beir, tmp_path, beir / "corpus.jsonl"):
        docs = read_documents(source).documents
        assert [(d.doc_id, d.title, d.text, d.metadata) for d in docs] == [
            ("d1", "Flu", "Flu is viral.", {"url": "http://x"}), ("d2", None, "Colds are mild.", {})]


def test_folder_is_walked_sorted_with_skips_and_warnings(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "b" / "deep.md").write_text("Deep.")
    (tmp_path / "a.txt").write_text("Top.")
    (tmp_path / ".hidden.txt").write_text("Hidden.")
    (tmp_path / ".git" / "config.txt").write_text("Hidden too.")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "b" / "data.bin").write_bytes(b"\x00\x01")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin.txt").write_bytes("naïve".encode("latin-1"))
    batch = read_documents(tmp_path)
    assert [d.text for d in batch.documents] == ["Top.", "Deep."]
    assert batch.skipped == [
        (str(tmp_path / "image.png"), "unknown file type '.png'"),
        (str(tmp_path / "b" / "data.bin"), "unknown file type '.bin'"),
        (str(tmp_path / "empty.txt"), "empty document"),
        (str(tmp_path / "latin.txt"), "the file is not UTF-8 text: byte 0xef at byte offset 2"),
    ]
    assert batch.warnings == ["skipped 2 files of unknown type (.png: 1, .bin: 1); known: "
                              ".txt .md .html/.htm .pdf .docx, .jsonl/.csv/.tsv/.json (one document per row), a BEIR corpus.jsonl"]
    assert batch.summary() == ("read 2 documents; skipped 4 (2 unknown file type, 1 empty document, "
                               "1 the file is not UTF-8 text)")
    assert [d.text for d in read_documents(tmp_path, recursive=False).documents] == ["Top."]
    files, skipped = document_files(tmp_path)
    assert files == [tmp_path / "a.txt", tmp_path / "empty.txt", tmp_path / "latin.txt", tmp_path / "b" / "deep.md"]
    assert len(skipped) == 2


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("latin.txt", "naïve".encode("latin-1"), r"latin\.txt, line 1: the file is not UTF-8 text: found byte 0xef at byte offset 2"),
        ("empty.md", b"  \n", r"empty\.md: empty document: found only whitespace"),
        ("slides.pptx", b"PK", r"slides\.pptx: unknown file type '\.pptx'"),
        ("blank.html", b"<html><script>x()</script></html>", r"blank\.html: empty document: found no visible text"),
        ("none.jsonl", b"", r"none\.jsonl: empty document"),
    ],
)
def test_a_file_named_explicitly_must_be_readable(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_documents([tmp_path / name])


def test_missing_path_and_no_documents_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope: no such file or folder"):
        read_documents(tmp_path / "nope")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match=r"no documents to index: found 1 skipped \(.*image\.png: unknown file type"):
        read_documents(tmp_path)


def test_the_same_id_from_two_sources_is_an_error_but_the_same_file_twice_is_not(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,text\nx,one\n")
    (tmp_path / "b.csv").write_text("id,text\nx,two\n")
    assert len(read_documents([tmp_path / "a.csv", tmp_path / "a.csv"], id_column="id").documents) == 1
    with pytest.raises(DataError, match=r"b\.csv: two documents have the same id \(key 'doc_id'\): found 'x'"):
        read_documents([tmp_path / "a.csv", tmp_path / "b.csv"], id_column="id")


def test_content_hash_follows_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("v1")
    first = read_documents(path).documents[0].content_hash
    assert read_documents(path).documents[0].content_hash == first
    path.write_text("v2")
    assert read_documents(path).documents[0].content_hash != first


def test_document_defaults_its_id_and_hash() -> None:
    doc = Document(path="x.txt", text="hello")
    assert doc.doc_id == "x.txt" and len(doc.content_hash) == 64


def test_a_row_with_a_lone_surrogate_is_an_error_naming_the_row(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "bad \\ud800 escape"}\n')
    with pytest.raises(DataError, match=r"rows\.jsonl, row 2: the text is not valid Unicode \(key 'text'\): found a lone surrogate '\\ud800' at character 4"):
        read_documents(path)
