"""Images and documents for a model that reads only text.

One pasted screenshot, or a Read of a PNG inside a ``tool_result``, must not end a Claude Code
session: an image becomes a short note the model can read (what it was, how big, that the local
model cannot see it) and the response says so. Documents give their text where that is cheap:
plain text as it is, PDFs through pypdf (pure Python), anything else a note.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from typing import Any

log = logging.getLogger(__name__)

# A PDF's text is extracted up to this many pages and characters; the rest is summarised by a note.
PDF_MAX_PAGES = 100
DOCUMENT_MAX_CHARS = 200_000


def _approx_size(data: str) -> str:
    size = len(data) * 3 // 4
    if size >= 1024 * 1024:
        return f"about {size / (1024 * 1024):.1f} MB"
    if size >= 1024:
        return f"about {size // 1024} KB"
    return f"{size} bytes"


def image_note(block: dict[str, Any]) -> str:
    """What an image becomes for a text-only model: its kind and size, and that it was not seen."""
    source = block.get("source") or {}
    kind = source.get("type")
    if kind == "base64":
        what = f"{source.get('media_type', 'image')}, {_approx_size(str(source.get('data', '')))}"
    elif kind == "url":
        what = f"from {source.get('url', 'a URL')}"
    else:
        what = "an uploaded file"
    return f"[image ({what}) omitted: the local model cannot see images]"


def _document_note(block: dict[str, Any], why: str) -> str:
    title = block.get("title")
    name = f" {title!r}" if isinstance(title, str) and title else ""
    return f"[document{name} omitted: {why}]"


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader  # imported here: only PDFs pay for it

    reader = PdfReader(io.BytesIO(data))
    pages = [page.extract_text() or "" for page in reader.pages[:PDF_MAX_PAGES]]
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if len(reader.pages) > PDF_MAX_PAGES:
        text += f"\n[… {len(reader.pages) - PDF_MAX_PAGES} more pages not shown]"
    return text


def _decoded(source: dict[str, Any]) -> bytes | None:
    try:
        return base64.b64decode(str(source.get("data", "")), validate=False)
    except (binascii.Error, ValueError):
        return None


def _cut(text: str) -> str:
    if len(text) <= DOCUMENT_MAX_CHARS:
        return text
    return text[:DOCUMENT_MAX_CHARS] + f"\n[… {len(text) - DOCUMENT_MAX_CHARS} more characters not shown]"


def document_text(block: dict[str, Any]) -> str:
    """The text of a document block (plain text, PDF, or content blocks), else a short note."""
    source = block.get("source") or {}
    kind, media = source.get("type"), source.get("media_type", "")
    text: str | None = None
    if kind == "text" and isinstance(source.get("data"), str):
        text = source["data"]
    elif kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = "\n".join(
                b.get("text", "") if b.get("type") == "text" else image_note(b)
                for b in content if isinstance(b, dict)
            )
    elif kind == "base64" and media.startswith("text/"):
        raw = _decoded(source)
        text = None if raw is None else raw.decode("utf-8", errors="replace")
    elif kind == "base64" and media == "application/pdf":
        raw = _decoded(source)
        try:
            text = _pdf_text(raw) if raw is not None else None
        except Exception as exc:  # pypdf raises many kinds on a damaged file; a note is the answer to all
            log.info("could not read a PDF document: %s", exc)
            return _document_note(block, "the PDF could not be read")
        if text is not None and not text.strip():
            return _document_note(block, "the PDF has no extractable text (scanned pages?)")
    if text is None:
        where = f"a {media} file" if media else (f"a {kind} source" if kind else "an unknown source")
        return _document_note(block, f"the local model cannot read {where}")
    title = block.get("title")
    heading = f"[document: {title}]\n" if isinstance(title, str) and title else ""
    return heading + _cut(text)


def count_images(messages: list[dict[str, Any]]) -> int:
    """Images anywhere in a conversation, including inside ``tool_result`` content."""
    count = 0
    for message in messages:
        for block in message.get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "image":
                count += 1
            inner = block.get("content")
            if isinstance(inner, list):
                count += sum(1 for b in inner if isinstance(b, dict) and b.get("type") == "image")
    return count


def images_notice(count: int, model: str) -> str:
    """The response header / log line that says images were replaced ('' when there were none)."""
    if not count:
        return ""
    noun = "image" if count == 1 else "images"
    return f"{count} {noun} replaced by a text note: model {model} cannot see images"
