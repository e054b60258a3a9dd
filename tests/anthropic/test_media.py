"""Images and documents for a text-only model: notes and extracted text, never an error."""

from __future__ import annotations

import base64

from pensieve_server.anthropic.media import count_images, document_text, image_note, images_notice


def _pdf(text: str) -> bytes:
    """A one-page PDF showing ``text``, written out by hand (offsets computed, so readers take it)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_image_note_names_type_and_size() -> None:
    note = image_note({"type": "image", "source": {"type": "base64", "media_type": "image/webp",
                                                   "data": _b64(b"x" * 3000)}})
    assert note == "[image (image/webp, about 2 KB) omitted: the local model cannot see images]"
    assert "https://e.x/a.png" in image_note({"type": "image", "source": {"type": "url", "url": "https://e.x/a.png"}})


def test_plain_text_documents_give_their_text() -> None:
    inline = {"type": "document", "title": "notes", "source": {"type": "text", "media_type": "text/plain",
                                                               "data": "line one"}}
    encoded = {"type": "document", "source": {"type": "base64", "media_type": "text/plain",
                                              "data": _b64("héllo".encode())}}
    blocks = {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "a"},
                                                                            {"type": "text", "text": "b"}]}}
    assert document_text(inline) == "[document: notes]\nline one"
    assert document_text(encoded) == "héllo"
    assert document_text(blocks) == "a\nb"


def test_pdf_text_is_extracted() -> None:
    block = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                            "data": _b64(_pdf("Quarterly numbers rose"))}}
    assert "Quarterly numbers rose" in document_text(block)


def test_unreadable_documents_become_notes() -> None:
    broken = {"type": "document", "title": "x.pdf", "source": {"type": "base64", "media_type": "application/pdf",
                                                               "data": _b64(b"not a pdf at all")}}
    remote = {"type": "document", "source": {"type": "url", "url": "https://e.x/a.pdf"}}
    assert document_text(broken) == "[document 'x.pdf' omitted: the PDF could not be read]"
    assert document_text(remote).startswith("[document omitted: the local model cannot read")


def test_images_are_counted_inside_tool_results_too() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}
    messages = [{"role": "user", "content": [image]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [image, image]}]}]
    assert count_images(messages) == 3
    assert images_notice(0, "m") == ""
    assert images_notice(1, "m") == "1 image replaced by a text note: model m cannot see images"
