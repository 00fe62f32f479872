"""Real PDF, Word and HTML files for tests and benchmarks, written by the libraries people use.

PDFs come from reportlab (running header, page numbers, outline bookmarks, optional
encryption, or an image and no text), Word files from python-docx (headings, tables, a page
header and footer), HTML by hand (with the page chrome a real site has).
"""

import io
from dataclasses import dataclass, field
from pathlib import Path

# Vietnamese needs a font with its glyphs; reportlab's built-in Helvetica is Latin-1 only.
_UNICODE_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


@dataclass
class PdfPage:
    lines: list[str]
    bookmarks: list[tuple[int, str]] = field(default_factory=list)  # (level, title) starting on this page


def write_pdf(
    path: Path,
    pages: list[PdfPage],
    header: str | None = "Sao Mai Logistics — Staff Handbook",
    page_numbers: bool = True,
    user_password: str | None = None,
    owner_password: str | None = None,
) -> Path:
    """A PDF with one text line per entry of each page's `lines` (a trailing '-' hyphenates)."""
    from reportlab.lib import pdfencrypt
    from reportlab.pdfgen import canvas

    encrypt = None
    if user_password is not None or owner_password is not None:
        encrypt = pdfencrypt.StandardEncryption(user_password or "", ownerPassword=owner_password or "owner")
    pdf = canvas.Canvas(str(path), encrypt=encrypt)
    font = _font()
    for number, page in enumerate(pages, 1):
        if header:
            pdf.setFont(font, 9)
            pdf.drawString(72, 800, header)
        for index, (level, title) in enumerate(page.bookmarks):
            key = f"p{number}-{index}"
            pdf.bookmarkPage(key)
            pdf.addOutlineEntry(title, key, level=level)
        text = pdf.beginText(72, 770)
        text.setFont(font, 11)
        for line in page.lines:
            text.textLine(line)
        pdf.drawText(text)
        if page_numbers:
            pdf.setFont(font, 9)
            pdf.drawString(297, 40, str(number))
        pdf.showPage()
    pdf.save()
    return path


def write_image_pdf(path: Path) -> Path:
    """A one-page PDF holding a picture of text and no text layer: a scan."""
    from PIL import Image, ImageDraw
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    image = Image.new("RGB", (400, 120), "white")
    ImageDraw.Draw(image).text((10, 50), "Scanned invoice 2024-117", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    pdf = canvas.Canvas(str(path))
    pdf.drawImage(ImageReader(io.BytesIO(buffer.getvalue())), 72, 600, width=400, height=120)
    pdf.showPage()
    pdf.save()
    return path


def _font() -> str:
    if not _UNICODE_FONT.is_file():
        return "Helvetica"
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    if "DejaVuSans" not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont("DejaVuSans", str(_UNICODE_FONT)))
    return "DejaVuSans"


def write_docx(
    path: Path,
    blocks: list[tuple[str, object]],
    page_header: str | None = "CONFIDENTIAL — page header",
    page_footer: str | None = "Footer: printed copies are uncontrolled",
    title: str | None = None,
) -> Path:
    """A Word file from ("h1".."h9", text), ("p", text) and ("table", rows) blocks, in order."""
    import docx

    document = docx.Document()
    if title:
        document.core_properties.title = title
    section = document.sections[0]
    if page_header:
        section.header.paragraphs[0].text = page_header
    if page_footer:
        section.footer.paragraphs[0].text = page_footer
    for kind, value in blocks:
        if kind.startswith("h"):
            document.add_heading(str(value), level=int(kind[1:]))
        elif kind == "table":
            rows = list(value)
            table = document.add_table(rows=len(rows), cols=len(rows[0]))
            for row, cells in zip(table.rows, rows, strict=True):
                for cell, text in zip(row.cells, cells, strict=True):
                    cell.text = text
        else:
            document.add_paragraph(str(value))
    document.save(str(path))
    return path


def html_page(title: str, sections: list[tuple[int, str, list[str]]], lang: str = "en") -> str:
    """A page with site chrome (navigation, header, footer, a script, a cookie banner) around a
    <main> of headings (level, title) and their paragraphs."""
    body = "\n".join(
        f"<h{level}>{heading}</h{level}>\n" + "\n".join(f"<p>{paragraph}</p>" for paragraph in paragraphs)
        for level, heading, paragraphs in sections
    )
    return f"""<!DOCTYPE html>
<html lang="{lang}"><head><meta charset="utf-8"><title>{title}</title>
<style>body {{ font-family: sans-serif; }}</style>
<script>window.analytics = "tracking code that is not content";</script></head>
<body>
<header><a href="/">Intranet home</a> <span>Search the intranet</span></header>
<nav><ul><li><a href="/hr">HR menu item</a></li><li><a href="/it">IT menu item</a></li></ul></nav>
<main>
{body}
</main>
<div class="cookie" style="display: none">Cookie banner text that is hidden</div>
<footer>Copyright footer text of the intranet</footer>
</body></html>
"""
