"""`producer ingest` as a user runs it, on a folder of bad files beside good ones: every bad
file refused with its reason, the good ones in, exit codes, Ctrl-C and SIGTERM."""

import codecs
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import psycopg
import pytest

from tests.docgen import PdfPage, write_docx, write_image_pdf, write_pdf
from tests.integration.conftest import REPO, cli_env, run_cli, run_json
from tests.permissions import without_root_powers

GOOD = "The cafeteria on the second floor serves lunch from eleven thirty until two o'clock."
BOMB = "---\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)
)


def front(level: str, text: str = GOOD) -> str:
    return f"---\naccess_level: {level}\n---\n{text}\n"


def bad_and_good(root: Path, outside: Path) -> tuple[set[str], set[str]]:
    """Write the folder; returns (names that must be refused, names that must be accepted)."""
    root.mkdir(parents=True)
    bad = {
        "nul.md": front("public", "text with a \x00 NUL byte").encode(),
        "binary.txt": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00",
        "latin1.md": front("public", "Chính sách").encode("utf-8").replace("í".encode(), b"\xed"),
        "empty.md": b"   \n\n",
        "empty.html": b"<html><body><script>1</script></body></html>",
        "fake.docx": b"a text file renamed to .docx",
        "bomb.md": (BOMB + "---\nBody\n").encode(),
        "recursive.md": b"---\naccess_level: &a [*a]\n---\nBody\n",
        "duplicate.md": b"---\naccess_level: public\naccess_level: director_only\n---\nBody\n",
        "unknown-level.md": front("top_secret").encode(),
        "near-miss.md": b"---\nAccess_Level: director_only\n---\nBody\n",
        "loose-fence.md": b"--- \naccess_level: director_only\n---\nBody\n",
        "blank-first.md": b"\n---\naccess_level: director_only\n---\nBody\n",
        "big.txt": front("public", "word " * 30000).encode(),
    }
    good = {
        "utf16.md": codecs.BOM_UTF16_LE + front("public", "Nhân viên được nghỉ mười hai ngày.").encode("utf-16-le"),
        'it\'s "quoted".md': front("public").encode(),
        "nan.md": b"---\naccess_level: public\nratio: .nan\nreviewed: 2024-05-01\n---\nBody with odd metadata.\n",
        "plain.txt": b"A memo with its level from --level.",
    }
    for name, data in {**bad, **good}.items():
        (root / name).write_bytes(data)
    write_pdf(root / "good.pdf", [PdfPage([GOOD])])
    write_docx(root / "good.docx", [("h1", "Good"), ("p", GOOD)])
    write_image_pdf(root / "scan.pdf")
    write_pdf(root / "secret.pdf", [PdfPage([GOOD])], user_password="pw")
    (root / "corrupt.pdf").write_bytes((root / "good.pdf").read_bytes()[:300])
    (root / "truncated.docx").write_bytes((root / "good.docx").read_bytes()[:2000])
    (root / "logo.png").write_bytes(b"\x89PNG")
    (outside / "passwords.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "shadow.txt").symlink_to(outside / "passwords.txt")
    (root / "dangling.md").symlink_to(root / "nothing-here.md")
    with open(os.path.join(os.fsencode(root), b"caf\xe9.md"), "wb") as file:
        file.write(front("public").encode())
    refused = set(bad) | {
        "scan.pdf",
        "secret.pdf",
        "corrupt.pdf",
        "truncated.docx",
        "shadow.txt",
        "dangling.md",
        "caf\\xe9.md",
    }
    return refused, set(good) | {"good.pdf", "good.docx"}


@pytest.fixture
def env(make_settings, migrated_url, tmp_path):
    settings = make_settings(database_url=migrated_url, model="fake:64", chunk_min_tokens=20, chunk_max_tokens=60)
    return {**cli_env(settings), "FLEET_MAX_FILE_MB": "0.1", "FLEET_PARSE_WORKERS": "2"}


def test_bad_files_are_refused_one_by_one_and_the_good_ones_go_in(env, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    refused, accepted = bad_and_good(tmp_path / "docs", outside)
    ingest = ("producer", "ingest", str(tmp_path / "docs"), "--level", "employee_only")
    result = run_cli(env, *ingest, "--json", check=False)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    reasons = {item["path"]: item["reason"] for item in report["rejected"]}
    assert set(reasons) == refused
    assert all(reason.strip() and "\n" not in reason for reason in reasons.values())
    assert "OCR is not supported" in reasons["scan.pdf"] and "password" in reasons["secret.pdf"]
    assert "leaves the ingested folder" in reasons["shadow.txt"]
    assert "FLEET_MAX_FILE_MB" in reasons["big.txt"]
    assert report["documents_new"] == len(accepted)
    assert report["skipped"] == [{"path": "logo.png", "reason": report["skipped"][0]["reason"]}]
    with closing(psycopg.connect(env["FLEET_DATABASE_URL"])) as conn:
        stored = {path for (path,) in conn.execute("SELECT source_path FROM documents")}
        texts = " ".join(text for (text,) in conn.execute("SELECT text FROM chunks"))
    assert stored == accepted
    assert "root:x:0:0" not in texts

    text = run_cli(env, *ingest, check=False)
    assert text.returncode == 3
    last_lines = text.stdout.strip().splitlines()[-len(refused) :]
    assert all(line.startswith("refused ") for line in last_lines)


def test_exit_codes(env, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "memo.md").write_text(front("public"))
    assert run_cli(env, "producer", "ingest", str(docs)).returncode == 0
    missing = run_cli(env, "producer", "ingest", str(tmp_path / "nope"), check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    unknown = run_cli(env, "producer", "ingest", str(docs), "--level", "ceo", check=False)
    assert unknown.returncode == 2 and "unknown access level 'ceo'" in unknown.stderr
    down = run_cli(
        {**env, "FLEET_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"},
        "producer",
        "ingest",
        str(docs),
        check=False,
    )
    assert down.returncode == 1 and "Postgres" in down.stderr


@pytest.mark.parametrize(
    ("overrides", "args", "message"),
    [
        ({"FLEET_DATA_DIR": "FILE"}, (), "is a file, not a folder"),
        (
            {"FLEET_CHUNK_MIN_TOKENS": "900", "FLEET_CHUNK_MAX_TOKENS": "600"},
            (),
            "FLEET_CHUNK_MIN_TOKENS (900) is above",
        ),
        ({"FLEET_MODEL": "fake:0"}, (), "has no dimensions"),
        ({}, ("search", "q", "--level", "public", "--top-k", "0"), "outside 1 to 1000"),
        ({}, ("search", "q", "--level", "public", "--top-k", "100000"), "outside 1 to 1000"),
    ],
)
def test_usage_errors_say_what_to_fix_not_check_that_it_is_up(env, tmp_path, overrides, args, message):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "memo.md").write_text(front("public"))
    if overrides.get("FLEET_DATA_DIR") == "FILE":
        (tmp_path / "a-file").write_text("x")
        overrides = {"FLEET_DATA_DIR": str(tmp_path / "a-file")}
        env = {key: value for key, value in env.items() if key != "FLEET_DATABASE_URL"}
    result = run_cli({**env, **overrides}, "producer", *(args or ("ingest", str(docs))), check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "check that it is up" not in result.stderr and "Traceback" not in result.stderr


def test_prune_keeps_the_documents_of_a_folder_it_cannot_read(env, tmp_path):
    docs = tmp_path / "docs"
    (docs / "open").mkdir(parents=True)
    (docs / "locked").mkdir()
    (docs / "open/a.md").write_text(front("public"))
    (docs / "locked/b.md").write_text(front("public", "The locked folder's memo about parking."))
    run_cli(env, "producer", "ingest", str(docs))
    os.chmod(docs / "locked", 0o000)
    try:
        command = [*without_root_powers(), sys.executable, "-m", "producer", "ingest", str(docs), "--prune", "--json"]
        result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        os.chmod(docs / "locked", 0o755)
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout)
    assert report["documents_removed"] == 0
    assert "cannot read this folder" in {r["path"]: r["reason"] for r in report["rejected"]}["locked/"]
    with closing(psycopg.connect(env["FLEET_DATABASE_URL"])) as conn:
        assert {path for (path,) in conn.execute("SELECT source_path FROM documents")} == {"open/a.md", "locked/b.md"}


SMALL_CHUNKS = {"FLEET_CHUNK_MIN_TOKENS": "20", "FLEET_CHUNK_MAX_TOKENS": "60"}


def slow_ingest(env: dict, docs: Path, log: Path) -> subprocess.Popen:
    """`producer ingest` in-process with a model slow enough to interrupt mid-embedding."""
    return subprocess.Popen(
        [sys.executable, "-m", "producer", "ingest", str(docs)],
        env={
            **env,
            **SMALL_CHUNKS,
            "FLEET_MODEL": "null:64@300",
            "FLEET_TASK_CHUNKS": "4",
            "FLEET_BATCH_TOKENS": "256",
        },
        cwd=REPO,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def embedded(url: str) -> tuple[int, int]:
    with closing(psycopg.connect(url)) as conn:
        return conn.execute(
            "SELECT count(*) FILTER (WHERE embedded_at IS NOT NULL), count(*) FROM chunk_embeddings"
        ).fetchone()


def test_ctrl_c_stops_within_seconds_and_leaves_the_rest_pending(env, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for index in range(12):
        (docs / f"memo-{index}.md").write_text(front("public", " ".join([GOOD] * 30)))
    process = slow_ingest(env, docs, tmp_path / "ingest.log")
    url = env["FLEET_DATABASE_URL"]
    assert wait_for(lambda: embedded(url)[0] > 0, 120), (tmp_path / "ingest.log").read_text()
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    assert process.wait(timeout=30) == 130
    assert time.monotonic() - started < 10
    done, total = embedded(url)
    assert 0 < done < total  # the rest waits, pending, for the next run
    assert run_cli({**env, **SMALL_CHUNKS, "FLEET_MODEL": "null:64"}, "producer", "ingest", str(docs)).returncode == 0
    assert embedded(url) == (total, total)


def test_sigterm_stops_the_embedded_postgres_it_started(make_settings, tmp_path):
    settings = make_settings(model="null:64@300", chunk_min_tokens=20, chunk_max_tokens=60)
    env = {**cli_env(settings), "FLEET_TASK_CHUNKS": "4"}
    env.pop("FLEET_DATABASE_URL", None)
    docs = tmp_path / "docs"
    docs.mkdir()
    for index in range(8):
        (docs / f"memo-{index}.md").write_text(front("public", " ".join([GOOD] * 30)))
    process = slow_ingest(env, docs, tmp_path / "ingest.log")
    pgdata = settings.data_dir / "postgres"
    assert wait_for(lambda: (pgdata / "postmaster.pid").is_file(), 120), (tmp_path / "ingest.log").read_text()
    time.sleep(3)  # into embedding
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    assert wait_for(lambda: not (pgdata / "postmaster.pid").exists(), 30), "the embedded Postgres still runs"
    quick = {**env, **SMALL_CHUNKS, "FLEET_MODEL": "null:64"}
    run_cli(quick, "producer", "ingest", str(docs))  # carries on where the terminated run stopped
    status = run_json(quick, "producer", "status")
    assert (status["documents"], status["pending"]) == (8, 0)
    assert wait_for(lambda: not (pgdata / "postmaster.pid").exists(), 30), "a later command left it running"
