"""Parsing speed: our parsers against the bare library call on the same files, and the intake
(read, parse, chunk) with one parse process against two, in one run.

    python ops/bench/parse.py [--pdfs 96] [--pages 40] [--docx 60] [--html 200] [--model fake] [--json]

PDFs, Word and HTML files are written first (reportlab, python-docx, by hand) from the same
Vietnamese and English text generator as the other benchmarks. Figures:
- pdf_pages_per_s_bare (pypdfium2: open, text of every page) vs pdf_pages_per_s_ours (PdfParser:
  plus header/footer removal, hyphenation, paragraphs, outline sections);
- docx_docs_per_s_bare (python-docx: paragraph texts) vs docx_docs_per_s_ours;
- html_docs_per_s_bare (lxml: text_content) vs html_docs_per_s_ours;
- intake_pages_per_s_1_worker vs intake_pages_per_s_2_workers over the PDFs (read from disk,
  fingerprinted, parsed and chunked with the model's tokenizer), and their ratio.
"""

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import docx  # noqa: E402
import lxml.html  # noqa: E402
import pypdfium2 as pdfium  # noqa: E402

from producer.documents import Source  # noqa: E402
from producer.ingest import chunk_limits  # noqa: E402
from producer.intake import Intake, Prepared  # noqa: E402
from producer.parsers import parser_for  # noqa: E402
from tests.docgen import PdfPage, html_page, write_docx, write_pdf  # noqa: E402
from tests.textgen import document  # noqa: E402
from workers.core.access import AccessLevel  # noqa: E402
from workers.core.settings import FleetSettings  # noqa: E402
from workers.embedding.model_info import resolve_model  # noqa: E402

LINE_CHARS = 95
LINES_PER_PAGE = 48


def _lines(text: str) -> list[str]:
    """Text wrapped to PDF lines, paragraphs separated by an empty line."""
    lines: list[str] = []
    for paragraph in text.split("\n\n"):
        line = ""
        for word in paragraph.split():
            if len(line) + len(word) + 1 > LINE_CHARS:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines += [line, ""]
    return lines


def make_corpus(folder: Path, pdfs: int, pages: int, docx_count: int, html_count: int) -> dict[str, list[Path]]:
    corpus: dict[str, list[Path]] = {"pdf": [], "docx": [], "html": []}
    for index in range(pdfs):
        lines = _lines(document("vi" if index % 2 else "en", pages * 8, seed=index))
        chunks = [lines[start : start + LINES_PER_PAGE] for start in range(0, len(lines), LINES_PER_PAGE)][:pages]
        corpus["pdf"].append(
            write_pdf(
                folder / f"manual-{index}.pdf", [PdfPage(chunk, [(0, f"Part {n}")]) for n, chunk in enumerate(chunks)]
            )
        )
    for index in range(docx_count):
        paragraphs = document("en" if index % 2 else "vi", 24, seed=100 + index).split("\n\n")
        blocks = [
            ("h1" if p.startswith("# ") else "h2" if p.startswith("## ") else "p", p.lstrip("# ")) for p in paragraphs
        ]
        corpus["docx"].append(write_docx(folder / f"policy-{index}.docx", blocks))
    for index in range(html_count):
        paragraphs = document("en" if index % 2 else "vi", 16, seed=300 + index).split("\n\n")
        page = html_page(f"Page {index}", [(1, "Intranet page", paragraphs[1:])])
        path = folder / f"page-{index}.html"
        path.write_text(page, encoding="utf-8")
        corpus["html"].append(path)
    return corpus


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def bare_pdf(paths: list[Path]) -> int:
    pages = 0
    for path in paths:
        pdf = pdfium.PdfDocument(path.read_bytes())
        for index in range(len(pdf)):
            page = pdf[index]
            textpage = page.get_textpage()
            textpage.get_text_range()
            textpage.close()
            page.close()
            pages += 1
        pdf.close()
    return pages


def bare_docx(paths: list[Path]) -> int:
    for path in paths:
        "\n".join(paragraph.text for paragraph in docx.Document(io.BytesIO(path.read_bytes())).paragraphs)
    return len(paths)


def bare_html(paths: list[Path]) -> int:
    for path in paths:
        lxml.html.document_fromstring(path.read_bytes()).text_content()
    return len(paths)


def ours(paths: list[Path]) -> int:
    for path in paths:
        parser_for(path.suffix).convert(path.read_bytes())
    return len(paths)


def timed(function, paths: list[Path]) -> tuple[int, float]:
    started = time.perf_counter()
    count = function(paths)
    return count, time.perf_counter() - started


def intake_rate(paths: list[Path], pages: int, workers: int, model: str) -> float:
    info = resolve_model(model)
    limits, _ = chunk_limits(FleetSettings(_env_file=None), info)
    sources = [Source(path, path.name, None, None, AccessLevel.public, 2**30) for path in paths]
    started = time.perf_counter()
    with Intake(workers, limits, info) as intake:
        outcomes = list(intake.run(sources))
    seconds = time.perf_counter() - started
    assert all(isinstance(outcome, Prepared) for outcome in outcomes), outcomes
    return _rate(pages, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pdfs", type=int, default=96)
    parser.add_argument("--pages", type=int, default=40)
    parser.add_argument("--docx", type=int, default=60)
    parser.add_argument("--html", type=int, default=200)
    parser.add_argument("--model", default="fake", help="whose tokenizer chunks in the intake runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-parse-") as folder:
        corpus = make_corpus(Path(folder), args.pdfs, args.pages, args.docx, args.html)
        pages, bare_pdf_s = timed(bare_pdf, corpus["pdf"])
        _, ours_pdf_s = timed(ours, corpus["pdf"])
        docs, bare_docx_s = timed(bare_docx, corpus["docx"])
        _, ours_docx_s = timed(ours, corpus["docx"])
        htmls, bare_html_s = timed(bare_html, corpus["html"])
        _, ours_html_s = timed(ours, corpus["html"])
        one = intake_rate(corpus["pdf"], pages, 1, args.model)
        two = intake_rate(corpus["pdf"], pages, 2, args.model)
    result = {
        "pdf_files": len(corpus["pdf"]),
        "pdf_pages": pages,
        "pdf_pages_per_s_bare": _rate(pages, bare_pdf_s),
        "pdf_pages_per_s_ours": _rate(pages, ours_pdf_s),
        "pdf_ours_vs_bare": bare_pdf_s / ours_pdf_s,
        "docx_docs": docs,
        "docx_docs_per_s_bare": _rate(docs, bare_docx_s),
        "docx_docs_per_s_ours": _rate(docs, ours_docx_s),
        "docx_ours_vs_bare": bare_docx_s / ours_docx_s,
        "html_docs": htmls,
        "html_docs_per_s_bare": _rate(htmls, bare_html_s),
        "html_docs_per_s_ours": _rate(htmls, ours_html_s),
        "html_ours_vs_bare": bare_html_s / ours_html_s,
        "intake_model": args.model,
        "intake_pages_per_s_1_worker": one,
        "intake_pages_per_s_2_workers": two,
        "intake_2_vs_1_workers": two / one,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for kind, unit in (("pdf", "pages"), ("docx", "docs"), ("html", "docs")):
        bare, mine = result[f"{kind}_{unit}_per_s_bare"], result[f"{kind}_{unit}_per_s_ours"]
        ratio = result[f"{kind}_ours_vs_bare"]
        print(f"{kind:5s} bare {bare:8.1f} {unit}/s   ours {mine:8.1f} {unit}/s   ours/bare {ratio:.2f}")
    print(
        f"intake (read, parse, chunk; {args.model}): 1 worker {one:.0f} pages/s, 2 workers {two:.0f} pages/s "
        f"= {two / one:.2f}x"
    )


if __name__ == "__main__":
    main()
