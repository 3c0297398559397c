"""Documents a person teaches: read (text, Markdown, PDF), chunk, store and index them.

A document becomes memory items of kind `document`, one per chunk, each with the document's id and
the character offset where it starts (its provenance), stored with the document in one transaction
(`ExperienceStore.add_document`): a document is stored whole or not at all. Chunks follow paragraphs:
paragraphs are packed into chunks of up to `max_chars` characters; a paragraph longer than that is cut
at sentence ends, else at spaces. `POST /v1/documents` and `lifelong teach` both go through `ingest`.
PDF text is extracted with pypdf (`pip install 'lifelong[documents]'`).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lifelong.errors import LifelongError
from lifelong.memory.store import ExperienceStore
from lifelong.types import DocumentRecord

__all__ = [
    "MEDIA_TYPES",
    "Chunk",
    "DocumentError",
    "chunk_text",
    "document_files",
    "ingest",
    "media_type_of",
    "read_document",
    "teach_files",
]

# Suffix -> media type of the documents that can be taught.
MEDIA_TYPES = {".txt": "text/plain", ".md": "text/markdown", ".markdown": "text/markdown", ".pdf": "application/pdf"}
MAX_NAME_CHARS = 256


class DocumentError(LifelongError):
    """A document that cannot be taught. `reason` says which kind of problem (the server maps it to
    an HTTP status): unsupported (415), too_large (413), unreadable or empty or bad_name (400)."""

    def __init__(self, problem: str, fix: str, reason: str) -> None:
        super().__init__(problem, fix)
        self.reason = reason


@dataclass(frozen=True)
class Chunk:
    offset: int  # where it starts in the document's text
    text: str


def media_type_of(name: str) -> str:
    media_type = MEDIA_TYPES.get(Path(name).suffix.lower())
    if media_type is None:
        raise DocumentError(
            f"{name!r} is not a document lifelong can read",
            f"send text, Markdown or PDF ({', '.join(sorted(MEDIA_TYPES))})",
            "unsupported",
        )
    return media_type


def read_document(name: str, data: bytes) -> str:
    """The text of a document, by its name's suffix; refuses what it cannot read or what is empty."""
    media_type = media_type_of(name)
    if media_type == "application/pdf":
        text = _pdf_text(name, data)
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DocumentError(
                f"{name!r} is not UTF-8 text (byte {exc.start} cannot be decoded)",
                "save it as UTF-8, or send a PDF with a .pdf name",
                "unreadable",
            ) from exc
    if not text.strip():
        raise DocumentError(f"{name!r} has no text", "send a document with some text in it", "empty")
    return text


def _pdf_text(name: str, data: bytes) -> str:
    try:
        import pypdf
    except ImportError as exc:
        raise DocumentError(
            "reading PDF needs the pypdf package", "pip install 'lifelong[documents]', or send text", "unsupported"
        ) from exc
    import io

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as exc:  # pypdf raises many kinds on a damaged file; all mean the same to the user
        raise DocumentError(
            f"{name!r} cannot be read as PDF ({type(exc).__name__}: {str(exc)[:120]})",
            "check that the file is a valid PDF with a text layer",
            "unreadable",
        ) from exc
    return "\n\n".join(pages)


_PARAGRAPH = re.compile(r"\S(?:.*?\S)?(?=[ \t]*\n[ \t]*\n|\s*\Z)", re.S)  # text between blank lines
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?\s+")


def chunk_text(text: str, max_chars: int = 800, min_chars: int = 500) -> list[Chunk]:
    """Paragraph-aware chunks with their offsets in `text`: consecutive paragraphs are packed while
    a chunk stays within `max_chars` (a chunk of at least `min_chars` is closed at a paragraph end);
    a longer paragraph is cut at the last sentence end (else space) before `max_chars`."""
    if min_chars > max_chars or max_chars < 50:
        raise ValueError("need 50 <= max_chars and min_chars <= max_chars")
    pieces: list[tuple[int, int]] = []  # (start, end) spans, each at most max_chars
    for m in _PARAGRAPH.finditer(text):
        start, end = m.start(), m.end()
        while end - start > max_chars:
            cut = _cut(text, start, start + max_chars)
            pieces.append((start, len(text[:cut].rstrip()) if text[start:cut].strip() else cut))
            start = cut
            while start < end and text[start].isspace():
                start += 1
        if start < end:
            pieces.append((start, end))
    chunks: list[Chunk] = []
    open_start, open_end = -1, -1
    for start, end in pieces:
        if open_start >= 0 and (end - open_start > max_chars or open_end - open_start >= min_chars):
            chunks.append(Chunk(open_start, text[open_start:open_end]))
            open_start = -1
        if open_start < 0:
            open_start = start
        open_end = end
    if open_start >= 0:
        chunks.append(Chunk(open_start, text[open_start:open_end]))
    return chunks


def _cut(text: str, start: int, limit: int) -> int:
    """Where to cut text[start:limit]: after its last sentence end in the second half, else at its
    last space, else at the limit."""
    window = text[start:limit]
    ends = [m.end() for m in _SENTENCE_END.finditer(window) if m.end() > len(window) // 2]
    if ends:
        return start + ends[-1]
    space = window.rfind(" ", len(window) // 2)
    return start + space if space > 0 else limit


def ingest(
    store: ExperienceStore,
    tenant: str,
    name: str,
    text: str,
    media_type: str = "text/plain",
    max_chars: int = 800,
) -> tuple[DocumentRecord, list[str]]:
    """Chunk a document's text and store it with its chunks in one transaction. Returns the record
    and the ids of the documents of the same name it superseded."""
    name = name.strip()
    if not name or len(name) > MAX_NAME_CHARS:
        raise DocumentError(
            "a document needs a name of 1 to 256 characters", "give it a name, e.g. its file name", "bad_name"
        )
    chunks = chunk_text(text, max_chars=max_chars, min_chars=min(500, max_chars))
    if not chunks:
        raise DocumentError(f"{name!r} has no text", "send a document with some text in it", "empty")
    doc = DocumentRecord(f"doc-{uuid.uuid4().hex}", tenant, name, media_type, len(text), len(chunks), time.time())
    superseded = store.add_document(doc, [(c.offset, c.text) for c in chunks])
    return doc, superseded


def document_files(paths: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """The files to teach, with the names their documents get: each file given (named by its file
    name) and the readable documents under each folder (named by their path inside it, so that
    teaching the folder again supersedes each of its documents, and only those)."""
    files: list[tuple[Path, str]] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in MEDIA_TYPES)
            files += [(f, f.relative_to(p).as_posix()) for f in found]
        elif p.is_file():
            media_type_of(p.name)  # a file named explicitly must be one we can read
            files.append((p, p.name))
        else:
            raise DocumentError(f"{p} does not exist", "check the path", "unreadable")
    return files


def teach_files(
    store: ExperienceStore,
    tenant: str,
    files: Sequence[tuple[Path, str]],
    max_bytes: int,
    on_file: Callable[[Path, DocumentRecord | None, str | None], None] | None = None,
) -> list[DocumentRecord]:
    """Store documents from files, each in its own transaction. A file that cannot be taught is
    skipped and reported through `on_file(path, None, why)`; each stored one as `on_file(path, doc, None)`."""
    taught = []
    for path, name in files:
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise DocumentError(f"{path} is {size} bytes", f"the limit is {max_bytes}; split it", "too_large")
            doc, _ = ingest(store, tenant, name, read_document(name, path.read_bytes()), media_type_of(name))
        except (DocumentError, OSError) as exc:
            if on_file is not None:
                on_file(path, None, exc.problem if isinstance(exc, DocumentError) else str(exc))
            continue
        taught.append(doc)
        if on_file is not None:
            on_file(path, doc, None)
    return taught
