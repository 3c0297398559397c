"""Documents: paragraph-aware chunks with offsets, reading text/Markdown/PDF, refusing what cannot be
taught, and `lifelong teach` storing files and folders into a serving store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifelong.cli import main
from lifelong.memory.documents import DocumentError, chunk_text, ingest, read_document
from lifelong.memory.store import ExperienceStore


def pdf_bytes(text: str) -> bytes:
    """A one-page PDF with `text` in its text layer (written by hand: no PDF writer is needed)."""
    content = f"BT /F1 12 Tf 10 100 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 600 144] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_chunks_follow_paragraphs_and_their_offsets_point_into_the_text() -> None:
    paragraphs = [f"Paragraph {i}. " + "word " * (20 + 15 * (i % 3)) for i in range(12)]
    text = "\n\n".join(paragraphs) + "\n\n" + "Long sentence number one. " * 60
    chunks = chunk_text(text, max_chars=800, min_chars=500)
    assert all(len(c.text) <= 800 for c in chunks) and len(chunks) >= 4
    for c in chunks:
        assert text[c.offset : c.offset + len(c.text)] == c.text
    # short paragraphs are packed whole: every chunk before the long paragraph starts a paragraph
    assert all(c.text.startswith("Paragraph") for c in chunks if c.offset < text.index("Long"))
    # the long paragraph is cut at sentence ends
    assert all(c.text.endswith(".") for c in chunks if c.offset >= text.index("Long"))
    assert chunk_text("   \n\n  ") == []


def test_reading_text_markdown_and_pdf_and_refusing_the_rest() -> None:
    assert read_document("a.md", "\ufeff# Title\n\nBody".encode()) == "# Title\n\nBody"
    assert "Plinth street" in read_document("a.pdf", pdf_bytes("The Zorbel office is on Plinth street."))
    for name, data, reason in [
        ("a.docx", b"PK..", "unsupported"),
        ("a.txt", b"\xff\xfe\x00bad", "unreadable"),
        ("a.txt", b"  \n\n ", "empty"),
        ("a.pdf", b"%PDF-1.4 this is not a pdf", "unreadable"),
    ]:
        with pytest.raises(DocumentError) as err:
            read_document(name, data)
        assert err.value.reason == reason and err.value.fix


def test_ingest_stores_every_chunk_with_its_offset(tmp_path: Path) -> None:
    text = "The canteen opens at noon.\n\n" + "Parking is on level minus two. " * 40
    with ExperienceStore(tmp_path / "s.sqlite") as store:
        record, superseded = ingest(store, "alice", "handbook.md", text, "text/markdown")
        chunks = store.document_chunks(record.id)
        assert superseded == [] and record.chunks == len(chunks) >= 2
        assert all(text[c.offset : c.offset + len(c.text)] == c.text for c in chunks)
        assert store.search_memory("alice", "when does the canteen open", 1)[0][0].id == chunks[0].id


def test_teach_stores_files_and_folders_and_skips_what_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "canteen.md").write_text("# Canteen\n\nThe canteen opens at noon.")
    (folder / "sub" / "office.pdf").write_bytes(pdf_bytes("The Zorbel office is on Plinth street."))
    (folder / "empty.txt").write_text("  ")
    (folder / "ignored.docx").write_bytes(b"PK")
    single = tmp_path / "parking.txt"
    single.write_text("Parking is on level minus two.")
    store_dir = tmp_path / "serve"
    args = ["teach", str(folder), str(single), "--store", str(store_dir), "--tenant", "alice", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"documents": 3, "chunks": 3, "skipped": 1, "tenant": "alice"}
    with ExperienceStore(store_dir / "experience.sqlite") as store:
        assert sorted(d.name for d in store.documents("alice")) == ["canteen.md", "parking.txt", "sub/office.pdf"]
        assert store.search_memory("alice", "Zorbel office", 1)[0][0].key == "sub/office.pdf"
        assert store.documents("bob") == []
    # a path that does not exist, or a bad tenant name, is refused before anything is stored
    assert main(["teach", str(tmp_path / "nope.md"), "--store", str(store_dir), "--tenant", "alice"]) == 2
    assert main(["teach", str(single), "--store", str(store_dir), "--tenant", "no/slash"]) == 2
    assert "does not exist" in capsys.readouterr().err
