"""Pairs files of every shape `migrate finetune` reads, and every way one can be unusable."""

import json
import unicodedata

import pytest

from migrations.finetune.pairs import MAX_LINE_BYTES, MIN_PAIRS, Pair, read_pairs, require_enough
from workers.core.errors import InvalidInput

ROWS = [(f"how many days of leave in year {n}?", f"In year {n} every employee has {n + 10} days.") for n in range(20)]


def write(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def jsonl(records) -> str:
    return "\n".join(json.dumps(record, ensure_ascii=False) for record in records) + "\n"


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        ("pairs.tsv", "query\tpositive\n" + "".join(f"{q}\t{p}\n" for q, p in ROWS), "tsv"),
        ("pairs.tsv", "".join(f"{q}\t{p}\n" for q, p in ROWS), "tsv"),
        ("pairs.csv", "query,positive\n" + "".join(f'"{q}","{p}"\n' for q, p in ROWS), "csv"),
        ("pairs.txt", "".join(f'"{q}","{p}"\n' for q, p in ROWS), "csv"),
        ("pairs.jsonl", jsonl({"query": q, "positive": p} for q, p in ROWS), "jsonl"),
        ("pairs.data", jsonl({"text_a": q, "text_b": p} for q, p in ROWS), "jsonl"),
        ("pairs.jsonl", jsonl({"a": q, "b": p} for q, p in ROWS), "jsonl"),
    ],
)
def test_two_column_shapes_give_the_same_pairs(tmp_path, name, text, kind):
    pairs, [report] = read_pairs([write(tmp_path, name, text)])
    assert pairs == [Pair(q, p) for q, p in ROWS]
    assert (report.format, report.read, report.used, report.refused) == (kind, 20, 20, 0)
    require_enough(pairs, [report])


TRIPLETS = [(q, p, f"not this {n}") for n, (q, p) in enumerate(ROWS)]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("triplets.tsv", "".join(f"{q}\t{p}\t{n}\n" for q, p, n in TRIPLETS)),
        ("triplets.csv", "query,positive,negative\n" + "".join(f'{q},"{p}",{n}\n' for q, p, n in TRIPLETS)),
        ("t.jsonl", jsonl({"query": q, "positive": p, "hard_negative": n} for q, p, n in TRIPLETS)),
        ("t.jsonl", jsonl({"anchor": q, "positive": p, "negative": n} for q, p, n in TRIPLETS)),
    ],
)
def test_three_columns_bring_hard_negatives(tmp_path, name, text):
    pairs, _ = read_pairs([write(tmp_path, name, text)])
    assert [pair.negative for pair in pairs] == [f"not this {n}" for n in range(20)]


def test_text_is_nfc_and_duplicates_are_dropped_across_files(tmp_path):
    decomposed = unicodedata.normalize("NFD", "Nghỉ phép năm")
    first = write(tmp_path, "a.tsv", f"{decomposed}\tMười hai ngày\n" + "".join(f"{q}\t{p}\n" for q, p in ROWS))
    second = write(tmp_path, "b.jsonl", jsonl([{"query": "Nghỉ phép năm", "positive": "Mười hai ngày"}]))
    pairs, reports = read_pairs([first, second])
    assert pairs[0] == Pair("Nghỉ phép năm", "Mười hai ngày")
    assert unicodedata.is_normalized("NFC", pairs[0].query)
    assert (reports[1].read, reports[1].used, reports[1].duplicates) == (1, 0, 1)


def test_unusable_records_are_refused_with_their_line(tmp_path):
    text = "".join(f"{q}\t{p}\n" for q, p in ROWS) + "only one column\n" + "\tno query\n"
    pairs, [report] = read_pairs([write(tmp_path, "p.tsv", text)])
    assert len(pairs) == 20
    assert report.refused == 2
    assert report.refusals[0].startswith("line 21:")


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("missing.tsv", None, "does not exist"),
        ("empty.tsv", "\n  \n", "is empty"),
        ("latin1.tsv", "caf\xe9\tcoffee\n".encode("latin-1"), "not UTF-8"),
        ("shape.jsonl", jsonl([{"question": "q", "answer": "a"}]), "no known record shape"),
        ("four.tsv", "a\tb\tc\td\n", "4 columns"),
        ("words.txt", "just some words\n", "no known shape"),
        ("long.tsv", "q\t" + "x" * (MAX_LINE_BYTES + 1) + "\n", "over 1 MB"),
    ],
)
def test_an_unusable_file_is_one_clear_error(tmp_path, name, content, says):
    path = tmp_path / name if content is None else write(tmp_path, name, content)
    with pytest.raises(InvalidInput, match=says):
        read_pairs([path])


def test_fewer_than_the_minimum_is_refused(tmp_path):
    pairs, reports = read_pairs([write(tmp_path, "few.tsv", "".join(f"{q}\t{p}\n" for q, p in ROWS[: MIN_PAIRS - 1]))])
    with pytest.raises(InvalidInput, match=f"only {MIN_PAIRS - 1} usable pairs"):
        require_enough(pairs, reports)
