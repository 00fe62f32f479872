"""Training pairs for `migrate finetune`, read from the files a company already has.

Shapes, chosen by content first, then by suffix:
- JSON lines (a first record that starts with `{`, or `.jsonl`/`.ndjson`/`.json`): each record
  one of `{"query", "positive"[, "hard_negative"]}`, `{"anchor", "positive"[, "negative"]}`,
  `{"text_a", "text_b"}` or `{"a", "b"}`;
- TSV (a tab in the first line, or `.tsv`) or CSV: two columns (query, positive) or three
  (query, positive, hard negative), with an optional header row naming them.

Text is NFC-normalised and trimmed; exact duplicate pairs are dropped and counted; a record that
cannot be used (a missing or empty field, another column count) is refused and counted with its
line. What makes the whole file unusable is an `InvalidInput` (exit 2): missing, empty, not
UTF-8, no known shape, a line over 1 MB.
"""

import csv
import hashlib
import io
import json
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workers.core.errors import InvalidInput

MAX_LINE_BYTES = 1 << 20
# What `migrate finetune` needs at the least: fewer pairs teach a model nothing but noise.
MIN_PAIRS = 16
# Refusals named in the report (the count is always whole).
REFUSALS_SHOWN = 5

# JSON record shapes: (query field, positive field, negative field or None).
JSON_SHAPES = (
    ("query", "positive", "hard_negative"),
    ("anchor", "positive", "negative"),
    ("text_a", "text_b", None),
    ("a", "b", None),
)
HEADER_NAMES = {"query", "anchor", "question", "positive", "passage", "negative", "hard_negative"}


@dataclass(frozen=True)
class Pair:
    query: str
    positive: str
    negative: str | None = None


@dataclass
class PairsReport:
    """What one file gave: recorded in training.json."""

    path: str
    sha256: str
    format: str
    read: int = 0
    used: int = 0
    duplicates: int = 0
    refused: int = 0
    refusals: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def admit(self, pair: Pair, seen: set[Pair]) -> bool:
        """Count `pair` as read: True when it is new (then used), False for a duplicate of one seen."""
        self.read += 1
        if pair in seen:
            self.duplicates += 1
            return False
        seen.add(pair)
        self.used += 1
        return True

    def refuse(self, line: int, why: str) -> None:
        self.refused += 1
        if len(self.refusals) < REFUSALS_SHOWN:
            self.refusals.append(f"line {line}: {why}")


def read_pairs(paths: list[Path]) -> tuple[list[Pair], list[PairsReport]]:
    """Every usable pair of `paths`, duplicates dropped across files, with a report per file."""
    pairs: list[Pair] = []
    seen: set[Pair] = set()
    reports = []
    for path in paths:
        text, digest = _read_text(path)
        kind = _format(path, text)
        report = PairsReport(str(path), digest, kind)
        records = _json_records(text, report) if kind == "jsonl" else _table_records(text, kind, report)
        pairs += [pair for pair in records if report.admit(pair, seen)]
        if not report.read and not report.refused:
            raise InvalidInput(f"pairs file {path} holds no pairs")
        reports.append(report)
    return pairs, reports


def require_enough(pairs: list[Pair], reports: list[PairsReport]) -> None:
    if len(pairs) < MIN_PAIRS:
        refused = "; ".join(refusal for report in reports for refusal in report.refusals)
        raise InvalidInput(
            f"only {len(pairs)} usable pairs (at least {MIN_PAIRS} are needed)"
            + (f"; refused: {refused}" if refused else "")
        )


def _read_text(path: Path) -> tuple[str, str]:
    """The file's text (UTF-8, a BOM allowed) and the SHA-256 of its bytes, lines bounded."""
    if not path.is_file():
        raise InvalidInput(f"pairs file {path} does not exist")
    digest, lines = hashlib.sha256(), []
    with path.open("rb") as file:
        for number, line in enumerate(iter(lambda: file.readline(MAX_LINE_BYTES + 1), b""), 1):
            if len(line) > MAX_LINE_BYTES:
                raise InvalidInput(f"{path}:{number}: a line over {MAX_LINE_BYTES // 2**20} MB; split the record")
            digest.update(line)
            lines.append(line)
    data = b"".join(lines)
    if not data.strip():
        raise InvalidInput(f"pairs file {path} is empty")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise InvalidInput(f"{path}:{line}: not UTF-8 (byte {err.start}); save the file as UTF-8") from None
    return text, digest.hexdigest()


def _format(path: Path, text: str) -> str:
    first = next(line for line in text.splitlines() if line.strip())
    suffix = path.suffix.lower()
    if first.lstrip().startswith("{") or suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if "\t" in first or suffix == ".tsv":
        return "tsv"
    if "," in first or suffix == ".csv":
        return "csv"
    raise InvalidInput(
        f"{path}: no known shape: expected JSON lines, or TSV/CSV with columns query, positive[, hard negative]"
    )


def _clean(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return unicodedata.normalize("NFC", value).strip() or None


def _pair(query: object, positive: object, negative: object = None) -> Pair | str:
    """The pair, or why it cannot be one."""
    query, positive = _clean(query), _clean(positive)
    if query is None or positive is None:
        return "an empty or missing query or positive"
    if negative is not None and _clean(negative) is None:
        return "an empty hard negative"
    return Pair(query, positive, _clean(negative))


def _json_records(text: str, report: PairsReport):
    shape = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if shape is None:
                raise InvalidInput(f"{report.path}:{number}: not a JSON record ({err.msg})") from None
            report.refuse(number, f"not JSON ({err.msg})")
            continue
        if shape is None:
            shape = _json_shape(record, report.path, number)
        if not isinstance(record, dict):
            report.refuse(number, "not a JSON object")
            continue
        query_field, positive_field, negative_field = shape
        made = _pair(record.get(query_field), record.get(positive_field), record.get(negative_field or ""))
        if isinstance(made, str):
            report.refuse(number, made)
        else:
            yield made


def _json_shape(record: object, path: str, number: int) -> tuple[str, str, str | None]:
    if isinstance(record, dict):
        for shape in JSON_SHAPES:
            if shape[0] in record and shape[1] in record:
                return shape
    known = "; ".join("{" + ", ".join(f'"{name}"' for name in shape if name) + "}" for shape in JSON_SHAPES)
    raise InvalidInput(f"{path}:{number}: no known record shape; expected one of {known}")


def _table_records(text: str, kind: str, report: PairsReport):
    reader = csv.reader(io.StringIO(text), delimiter="\t" if kind == "tsv" else ",")
    columns = None
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if columns is None:
            columns = len(row)
            if columns not in (2, 3):
                raise InvalidInput(
                    f"{report.path}:{number}: {columns} columns; expected query, positive[, hard negative]"
                )
            if {cell.strip().lower() for cell in row} <= HEADER_NAMES:
                continue  # the header row
        if len(row) != columns:
            report.refuse(number, f"{len(row)} columns where the file has {columns}")
            continue
        made = _pair(*row)
        if isinstance(made, str):
            report.refuse(number, made)
        else:
            yield made
