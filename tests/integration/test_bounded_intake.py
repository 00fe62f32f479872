"""One file can never take the run down: each hostile file of the kinds a probe found is read in a
parse process with a memory and a time cap, and is either bounded (chunked within the limits) or
refused with the bound it passed, while the good files beside it are stored and searchable."""

import json
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from producer import intake as intake_module
from producer.chunking import ChunkLimits
from producer.documents import Rejection, Source
from producer.intake import Bounds, Intake, Prepared, prepare
from producer.levels import Place
from tests.docgen import write_docx
from tests.integration.access import visible_at
from tests.integration.conftest import cli_env
from tests.textgen import ENGLISH
from workers.core.access import AccessLevel
from workers.embedding.model_info import resolve_model

pytestmark = pytest.mark.integration

GOOD = "Employees accrue one and a half days of annual leave for every month of service. " * 20


def source(path: Path) -> Source:
    return Source(path, path.name, (Place(path.name, None, None),), AccessLevel.public, 100 * 2**20)


def write_zip(path: Path, parts: dict[str, bytes | tuple[bytes, int]]) -> Path:
    """A zip whose part is bytes, or (a block, times) streamed: huge when inflated, small on disk."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as package:
        for name, content in parts.items():
            with package.open(name, "w", force_zip64=True) as part:
                block, times = content if isinstance(content, tuple) else (content, 1)
                for _ in range(times):
                    part.write(block)
    return path


def docx_with(path: Path, name: str, block: bytes, times: int) -> Path:
    """A real .docx with one part replaced by `block` repeated `times` times."""
    template = write_docx(path.with_suffix(".template.docx"), [("p", ENGLISH[0])])
    with zipfile.ZipFile(template) as package:
        parts: dict = {info.filename: package.read(info) for info in package.infolist()}
    parts[name] = (block, times)
    path_out = write_zip(path, parts)
    template.unlink()
    return path_out


def hostile_folder(root: Path) -> dict[str, str]:
    """The hostile files beside good ones; returns each hostile file and what must happen to it."""
    root.mkdir(parents=True)
    (root / "good-1.md").write_text("# Leave\n\n" + GOOD, encoding="utf-8")
    (root / "good-2.html").write_text(f"<html><body><h1>Leave</h1><p>{GOOD}</p></body></html>", encoding="utf-8")
    (root / "ab-dashes.md").write_text("ab-" * 1_000_000, encoding="utf-8")  # 3 MB of one "word"
    (root / "no-space.txt").write_text("x" * 2_000_000, encoding="utf-8")
    docx_with(root / "styles-bomb.docx", "word/styles.xml", b"<a/>" * 4096, 40_000)  # 650 MB inflated
    paragraphs = b"<w:p/>" * 4096
    docx_with(root / "empty-paragraphs.docx", "word/document.xml", paragraphs, 6_000)  # 150 MB of <w:p/>
    depth = 3000
    (root / "deep.html").write_text("<html><body>" + "<div>" * depth + "x" + "</div>" * depth + "</body></html>")
    return {
        "ab-dashes.md": "bounded",
        "no-space.txt": "bounded",
        "styles-bomb.docx": "zip bomb",
        "empty-paragraphs.docx": "zip bomb",
        "deep.html": "cannot be read whole",
    }


def test_a_folder_of_hostile_files_under_an_8_gb_cap_refuses_or_bounds_each(make_settings, migrated_url, tmp_path):
    docs = tmp_path / "docs"
    expected = hostile_folder(docs)
    settings = make_settings(database_url=migrated_url, model="fake:32", chunk_min_tokens=100, chunk_max_tokens=200)
    env = cli_env(settings)

    def cap() -> None:  # as `ulimit -v 8388608` would
        resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, resource.RLIM_INFINITY))

    command = [sys.executable, "-m", "producer", "ingest", str(docs), "--level", "public", "--json"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, preexec_fn=cap, timeout=600)
    assert result.returncode == 3, result.stderr[-2000:]
    refused = {item["path"]: item["reason"] for item in json.loads(result.stdout)["rejected"]}
    for name, outcome in expected.items():
        if outcome == "bounded":
            assert name not in refused, refused.get(name)
        else:
            assert outcome in refused[name], refused[name]
    search = [sys.executable, "-m", "producer", "search", "annual leave", "--level", "public", "--json"]
    answer = subprocess.run(search, env=env, capture_output=True, text=True, timeout=300)
    hits = json.loads(answer.stdout)
    assert len(answer.stdout.encode()) < 2**20, "a search answer over 1 MB"
    assert max(len(hit["text"]) for hit in hits) <= settings.chunk_max_chars
    # The fake model ranks nothing: that the good files are searchable, Milvus itself says.
    assert {"good-1.md", "good-2.html", "ab-dashes.md", "no-space.txt"} == visible_at(settings, AccessLevel.public)


def test_letters_without_a_space_become_chunks_of_at_most_max_chars(minilm, tmp_path):
    """WordPiece reads a 2 MB word as one unknown token: only the character cap bounds its chunk."""
    path = tmp_path / "word.txt"
    path.write_text("a" * 2_000_000, encoding="utf-8")
    with Intake(1, ChunkLimits(100, 256, 8000), resolve_model(minilm)) as intake:
        (outcome,) = intake.run([source(path)])
    assert isinstance(outcome, Prepared)
    assert max(len(chunk.text) for chunk in outcome.chunks) <= 8000
    assert sum(len(chunk.text) for chunk in outcome.chunks) == 2_000_000


def test_megabytes_of_ab_dashes_are_chunked_within_a_tight_memory_cap(qwen_tiny, tmp_path):
    """The tokenizer never sees more than max_chars at once, and Markdown is read block by block:
    6 MB of `ab-` (one word to the tokenizer, 4 million inline tokens to markdown-it) within 600 MB
    (20 MB within 450 MB when measured by hand; ops/bench/parse.py measures the large sizes)."""
    path = tmp_path / "ab.md"
    path.write_text("ab-" * 2_000_000, encoding="utf-8")
    limits = ChunkLimits(500, 1000, 8000)
    with Intake(1, limits, resolve_model(qwen_tiny), bounds=Bounds(memory_mb=600, timeout_s=600)) as intake:
        (outcome,) = intake.run([source(path)])
    assert isinstance(outcome, Prepared), outcome
    assert all(chunk.token_count <= 1000 and len(chunk.text) <= 8000 for chunk in outcome.chunks)


def test_a_file_past_the_memory_cap_is_refused_with_the_cap_and_the_next_file_is_read(tmp_path):
    big = tmp_path / "big.md"
    big.write_text(("# Part\n\n" + GOOD + "\n\n") * 40_000, encoding="utf-8")  # 68 MB
    small = tmp_path / "small.md"
    small.write_text(GOOD, encoding="utf-8")
    # 100 MB beyond the process's start: the file's bytes and its text alone take more.
    with Intake(1, ChunkLimits(100, 200), resolve_model("fake"), bounds=Bounds(memory_mb=100)) as intake:
        refused, read = intake.run([source(big), source(small)])
    assert isinstance(refused, Rejection) and "within 100 MB (FLEET_PARSE_MEMORY_MB)" in refused.reason
    assert isinstance(read, Prepared)


def slow_on_stuck(source: Source, limits: ChunkLimits, model) -> object:
    """A parser that never ends on one file, as a pathological PDF may make PDFium."""
    if source.name == "stuck.md":
        time.sleep(3600)
    return prepare(source, limits, model)


def test_a_file_past_the_time_cap_is_refused_and_the_files_in_flight_are_read_again(tmp_path):
    paths = []
    for name in ("a.md", "stuck.md", "b.md", "c.md", "d.md"):
        (tmp_path / name).write_text(GOOD, encoding="utf-8")
        paths.append(tmp_path / name)
    bounds = Bounds(timeout_s=5)
    with Intake(2, ChunkLimits(100, 200), resolve_model("fake"), work=slow_on_stuck, bounds=bounds) as intake:
        outcomes = list(intake.run([source(path) for path in paths]))
    assert [type(outcome).__name__ for outcome in outcomes] == ["Prepared", "Rejection", *["Prepared"] * 3]
    assert outcomes[1].reason == "too large to read within 5 s (FLEET_PARSE_TIMEOUT_S)"


def fail_in_this_process(*args, **kwargs):
    raise AssertionError("chunked in the ingesting process")


def test_nothing_is_chunked_in_the_ingesting_process(tmp_path, monkeypatch):
    monkeypatch.setattr(intake_module, "chunk_text", fail_in_this_process)
    path = tmp_path / "note.md"
    path.write_text(GOOD, encoding="utf-8")
    with Intake(1, ChunkLimits(100, 200), resolve_model("fake")) as intake:
        (outcome,) = intake.run([source(path)])
    assert isinstance(outcome, Prepared) and outcome.chunks


def test_every_part_of_a_docx_is_bounded_not_only_its_body(tmp_path, monkeypatch):
    from producer.parsers import docx as docx_parser

    document = write_docx(tmp_path / "fine.docx", [("p", ENGLISH[0])])
    assert docx_parser.DocxParser().convert(document.read_bytes()).text
    monkeypatch.setattr(docx_parser, "MAX_XML_BYTES", 4096)  # the XML of every part counts
    with pytest.raises(docx_parser.ParseError, match="MB of XML"):
        docx_parser.DocxParser().convert(document.read_bytes())
