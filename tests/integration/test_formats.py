"""PDF, Word and HTML through ingest and search on real Postgres and Milvus Lite: levels from
sidecars and `.fleet.yaml`, citations, idempotent re-ingest, level moves checked in Milvus."""

from contextlib import closing
from pathlib import Path

import pytest

from producer import commands
from tests.docgen import PdfPage, html_page, write_docx, write_pdf
from workers.core.access import AccessLevel
from workers.core.stores import catalog, milvus, postgres

PAYROLL = "Payroll is transferred on the twenty-fifth day of every month to the registered account."
BONUS = "The annual bonus pool for senior managers is eleven percent of operating profit."
FIRE = "In case of fire, leave the warehouse by the nearest marked exit and gather at the gate."
MERGER = "The board approved the merger with Blue River Freight at its meeting on the third of May."
VPN = "Connect to the company VPN before opening any internal system from home."
FILLER = "This paragraph describes routine procedures that every team follows during the year."


def build_corpus(root: Path) -> Path:
    """Levels only from `.fleet.yaml` files and sidecars: nothing in the documents themselves."""
    (root / "hr").mkdir(parents=True)
    (root / "safety").mkdir()
    (root / "board").mkdir()
    (root / ".fleet.yaml").write_text("access_level: public\n")
    (root / "hr/.fleet.yaml").write_text("access_level: employee_only\n")
    (root / "board/.fleet.yaml").write_text("access_level: director_only\n")
    pages = [
        PdfPage([FILLER, FILLER], [(0, "About this handbook")]),
        PdfPage(["Pay and benefits", PAYROLL, FILLER], [(0, "Pay and benefits")]),
        PdfPage([FILLER, FILLER, FILLER]),
        PdfPage(["Bonuses", BONUS], [(0, "Bonuses")]),
    ]
    write_pdf(root / "hr/handbook.pdf", pages)
    # The bonus manual is for managers: its sidecar says so, above the folder's employee_only.
    write_pdf(root / "hr/bonus-manual.pdf", [PdfPage([FILLER]), PdfPage(["Bonus pool", BONUS])])
    (root / "hr/bonus-manual.pdf.meta.yaml").write_text("access_level: manager_only\nowner: Finance\n")
    write_docx(
        root / "safety/fire-drill.docx",
        [("h1", "Emergencies"), ("p", FILLER), ("h2", "Fire"), ("p", FIRE), ("table", [["Exit", "Gate"], ["A", "1"]])],
    )
    write_docx(root / "board/minutes.docx", [("h1", "Minutes of the board"), ("h2", "Decisions"), ("p", MERGER)])
    (root / "it-guide.html").write_text(html_page("IT guide", [(1, "Remote work", [FILLER, VPN])]), encoding="utf-8")
    return root


@pytest.fixture
def settings(make_settings, migrated_url):
    return make_settings(
        database_url=migrated_url, model="fake:256", chunk_min_tokens=10, chunk_max_tokens=40, parse_workers=2
    )


def search(settings, query: str, level: AccessLevel, top_k: int = 5):
    return commands.search(settings, query, level, top_k).hits


def test_formats_are_ingested_at_their_declared_levels_with_citations(settings, tmp_path):
    report = commands.ingest(settings, build_corpus(tmp_path / "docs"), None, wait=False)
    assert (report.rejected, report.documents_new, report.files_seen) == ([], 5, 5)

    expectations = [
        (PAYROLL, "hr/handbook.pdf", AccessLevel.employee_only),
        (BONUS, "hr/bonus-manual.pdf", AccessLevel.manager_only),
        (FIRE, "safety/fire-drill.docx", AccessLevel.public),
        (MERGER, "board/minutes.docx", AccessLevel.director_only),
        (VPN, "it-guide.html", AccessLevel.public),
    ]
    for quote, path, level in expectations:
        hits = search(settings, quote, level)
        assert path in [hit.source_path for hit in hits], (quote, level)
        if level > AccessLevel.public:  # one level below never sees it
            below = search(settings, quote, AccessLevel(level - 1), 20)
            assert path not in {hit.source_path for hit in below}

    payroll = next(hit for hit in search(settings, PAYROLL, AccessLevel.employee_only) if PAYROLL in hit.text)
    assert payroll.page_start <= 2 <= payroll.page_end  # the quote's page is cited
    assert payroll.citation().startswith(f"hr/handbook.pdf p. {payroll.page_start}")
    bonus = next(hit for hit in search(settings, BONUS, AccessLevel.employee_only) if BONUS in hit.text)
    assert bonus.page_end == 4 and bonus.source_path == "hr/handbook.pdf"
    fire = next(hit for hit in search(settings, FIRE, AccessLevel.public) if FIRE in hit.text)
    assert fire.section == "Emergencies > Fire" and fire.page_start is None
    vpn = next(hit for hit in search(settings, VPN, AccessLevel.public) if VPN in hit.text)
    assert vpn.section == "Remote work"


def test_reingesting_unchanged_binary_files_enqueues_nothing(settings, tmp_path):
    docs = build_corpus(tmp_path / "docs")
    first = commands.ingest(settings, docs, None, wait=False)
    again = commands.ingest(settings, docs, None, wait=False)
    assert first.chunks_enqueued > 0
    assert (again.documents_unchanged, again.chunks_enqueued, again.chunks_removed) == (5, 0, 0)


def levels_in_milvus(settings, source_path: str) -> list[int]:
    """The level stored with each of a document's vectors, read from Milvus itself."""
    with closing(postgres.connect(settings)) as conn:
        (document_id,) = conn.execute("SELECT id FROM documents WHERE source_path = %s", (source_path,)).fetchone()
        collection = catalog.live_version(conn).collection
    client = milvus.connect(settings)
    milvus.ensure_loaded(client, collection)
    rows = client.query(collection, filter=f"document_id == {int(document_id)}", output_fields=["access_level"])
    return sorted(row["access_level"] for row in rows)


def test_a_sidecar_or_folder_rules_change_moves_the_document_in_milvus(settings, tmp_path):
    docs = build_corpus(tmp_path / "docs")
    commands.ingest(settings, docs, None, wait=False)
    assert set(levels_in_milvus(settings, "hr/bonus-manual.pdf")) == {AccessLevel.manager_only}

    (docs / "hr/bonus-manual.pdf.meta.yaml").write_text("access_level: director_only\n")
    (docs / "safety/.fleet.yaml").write_text("access_level: employee_only\n")
    report = commands.ingest(settings, docs, None, wait=False)
    assert report.documents_changed == 2
    assert set(levels_in_milvus(settings, "hr/bonus-manual.pdf")) == {AccessLevel.director_only}
    assert set(levels_in_milvus(settings, "safety/fire-drill.docx")) == {AccessLevel.employee_only}
    assert "hr/bonus-manual.pdf" not in {
        hit.source_path for hit in search(settings, BONUS, AccessLevel.manager_only, 20)
    }
    assert FIRE not in " ".join(hit.text for hit in search(settings, FIRE, AccessLevel.public, 20))


# Also a document indexed before fingerprints were recorded (migration 0003): no fingerprint.
@pytest.mark.parametrize("fingerprinted", [True, False])
def test_a_document_whose_level_can_no_longer_be_read_is_withdrawn(settings, tmp_path, fingerprinted):
    docs = build_corpus(tmp_path / "docs")
    commands.ingest(settings, docs, None, wait=False)
    if not fingerprinted:
        with closing(postgres.connect(settings)) as conn:
            conn.execute("UPDATE documents SET fingerprint = NULL")
    (docs / "hr/bonus-manual.pdf.meta.yaml").write_text("acess_level: director_only\n")  # a typo
    report = commands.ingest(settings, docs, None, wait=False)
    assert [r.path for r in report.rejected] == ["hr/bonus-manual.pdf"]
    assert "looks like 'access_level'" in report.rejected[0].reason
    assert report.documents_withdrawn == 1
    assert search(settings, BONUS, AccessLevel.director_only, 20) == [] or all(
        hit.source_path != "hr/bonus-manual.pdf" for hit in search(settings, BONUS, AccessLevel.director_only, 20)
    )
    with closing(postgres.connect(settings)) as conn:
        assert conn.execute("SELECT count(*) FROM documents WHERE source_path = 'hr/bonus-manual.pdf'").fetchone() == (
            0,
        )
    collection = "chunks_v1"
    client = milvus.connect(settings)
    with closing(postgres.connect(settings)) as conn:
        (embedded,) = conn.execute("SELECT count(*) FROM chunk_embeddings WHERE embedded_at IS NOT NULL").fetchone()
    assert milvus.count(client, collection) == embedded
