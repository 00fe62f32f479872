"""Parsing speed: our parsers against the bare library call on the same files, and the intake
(read, parse, chunk) with one parse process against two, in one run; with `--large`, the cost of
single large Markdown and HTML files as their size grows.

    python ops/bench/parse.py [--pdfs 96] [--pages 40] [--docx 60] [--html 200] [--model fake] [--json]
    python ops/bench/parse.py --large 10,50,200 [--model DIR] [--json]

PDFs, Word and HTML files are written first (reportlab, python-docx, by hand) from the same
Vietnamese and English text generator as the other benchmarks. Figures:
- pdf_pages_per_s_bare (pypdfium2: open, text of every page) vs pdf_pages_per_s_ours (PdfParser:
  plus header/footer removal, hyphenation, paragraphs, outline sections);
- docx_docs_per_s_bare (python-docx: paragraph texts) vs docx_docs_per_s_ours;
- html_docs_per_s_bare (lxml: text_content) vs html_docs_per_s_ours;
- intake_pages_per_s_1_worker vs intake_pages_per_s_2_workers over the PDFs (read from disk,
  fingerprinted, parsed and chunked with the model's tokenizer), and their ratio.
With `--large SIZES` (MB): for a Markdown and an HTML file of each size, read, parsed and chunked
in a fresh process of its own, set up as a parse process is (one tokenizer thread, its address
space capped at the default FLEET_PARSE_MEMORY_MB): seconds and the resident memory it added,
each per MB of file, their growth from the smallest size to each larger one (1.0: linear), and
whether the file was read or refused within the cap.
"""

import argparse
import io
import json
import os
import subprocess
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
from producer.levels import Place  # noqa: E402
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


def source(path: Path) -> Source:
    return Source(path, path.name, (Place(path.name, None, None),), AccessLevel.public, 2**31)


def intake_rate(paths: list[Path], pages: int, workers: int, model: str) -> float:
    info = resolve_model(model)
    limits, _ = chunk_limits(FleetSettings(_env_file=None), info)
    sources = [source(path) for path in paths]
    started = time.perf_counter()
    with Intake(workers, limits, info) as intake:
        outcomes = list(intake.run(sources))
    seconds = time.perf_counter() - started
    assert all(isinstance(outcome, Prepared) for outcome in outcomes), outcomes
    return _rate(pages, seconds)


def write_large(folder: Path, kind: str, megabytes: int) -> Path:
    """A Markdown or HTML file of about `megabytes` MB of Vietnamese and English paragraphs."""
    path = folder / f"large-{megabytes}.{kind}"
    with path.open("w", encoding="utf-8") as out:
        if kind == "html":
            out.write("<html><head><title>Large</title></head><body><main>\n")
        written, seed = 0, 0
        while written < megabytes * 2**20:
            text = document("vi" if seed % 2 else "en", 200, seed=seed)
            if kind == "html":
                paragraphs = [p for p in text.split("\n\n") if p.strip()]
                text = "".join(f"<h2>{p[3:]}</h2>\n" if p.startswith("## ") else f"<p>{p}</p>\n" for p in paragraphs)
            out.write(text)
            written += len(text.encode())
            seed += 1
        if kind == "html":
            out.write("</main></body></html>\n")
    return path


# Run in a fresh interpreter that imports what a parse process imports, and no more (this
# script's own imports — PDF and Word writers, the settings — would weigh on the figures).
_MEASURE_ONE = """
import json, resource, sys, time
from pathlib import Path
from producer.chunking import ChunkLimits
from producer.documents import Source
from producer.intake import Prepared, prepare
from producer.levels import Place
from workers.core.access import AccessLevel
from workers.embedding.model_info import resolve_model
from workers.embedding.tokenizer import load_token_counter

def peak_rss():
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["VmHWM"].split()[0]) / 1024

path, model, memory_mb = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, resource.RLIM_INFINITY))  # as a parse process
info = resolve_model(model)
load_token_counter(info)
Path("/proc/self/clear_refs").write_text("5")  # the peak so far (loading the tokenizer) forgotten
base_rss = peak_rss()
started = time.perf_counter()
outcome = prepare(Source(path, path.name, (Place(path.name, None, None),), AccessLevel.public, 2**31),
                  ChunkLimits(min(500, info.max_seq_length // 2), min(1000, info.max_seq_length)), info)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "base_rss_mb": base_rss, "peak_rss_mb": peak_rss(),
                  "chunks": len(outcome.chunks) if isinstance(outcome, Prepared) else None,
                  "refused": getattr(outcome, "reason", None)}))
"""


def large(sizes: list[int], model: str, memory_mb: int) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-parse-large-") as folder:
        for kind in ("md", "html"):
            for megabytes in sizes:
                path = write_large(Path(folder), kind, megabytes)
                file_mb = path.stat().st_size / 2**20
                command = [sys.executable, "-c", _MEASURE_ONE, str(path), model, str(memory_mb)]
                env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
                run = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
                figures = json.loads(run.stdout)
                path.unlink()
                rows.append({"kind": kind, "file_mb": round(file_mb, 1), **figures})
                rows[-1]["seconds_per_mb"] = figures["seconds"] / file_mb
    for row in rows:
        smallest = next(other for other in rows if other["kind"] == row["kind"])
        row["seconds_per_mb_growth"] = row["seconds_per_mb"] / smallest["seconds_per_mb"]
        # Memory per MB from the smallest size to this one: what each further MB of file costs.
        grown = row["file_mb"] - smallest["file_mb"]
        row["rss_mb_per_further_mb"] = (row["peak_rss_mb"] - smallest["peak_rss_mb"]) / grown if grown else None
    return {"model": model, "parse_memory_mb": memory_mb, "files": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", help="sizes in MB of single large files to measure, e.g. 10,50,200")
    parser.add_argument("--pdfs", type=int, default=96)
    parser.add_argument("--pages", type=int, default=40)
    parser.add_argument("--docx", type=int, default=60)
    parser.add_argument("--html", type=int, default=200)
    parser.add_argument("--model", default="fake", help="whose tokenizer chunks in the intake runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.large:
        memory_mb = FleetSettings(_env_file=None).parse_memory_mb
        result = large([int(size) for size in args.large.split(",")], args.model, memory_mb)
        if args.json:
            print(json.dumps(result, indent=2))
            return
        print(f"large files, each read as in a parse process (capped at {memory_mb} MB; {args.model}):")
        for row in result["files"]:
            outcome = row["refused"] or f"{row['chunks']} chunks"
            print(
                f"{row['kind']:4s} {row['file_mb']:6.1f} MB  {row['seconds']:7.1f} s "
                f"({row['seconds_per_mb']:.2f} s/MB, x{row['seconds_per_mb_growth']:.2f})  "
                f"peak RSS {row['peak_rss_mb']:6.0f} MB"
                + (f" (+{row['rss_mb_per_further_mb']:.1f} MB per further MB)" if row["rss_mb_per_further_mb"] else "")
                + f"  {outcome}"
            )
        return

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
