"""Official-looking Vietnamese documents headed by their numbers, written from real text.

Each document is laid out as a Vietnamese administrative document is: the issuer, `Số:` and its
number, the place and date, the kind and a title, a preamble that cites other documents by
number (`Căn cứ Nghị định số 54/2019/NĐ-CP ...`), then articles. The title and the articles are
real Vietnamese sentences: consecutive lines of the IWSLT 2015 English–Vietnamese test set
(ops/bench/data/README.md says where it comes from), so the text is what people wrote, and each
sentence's English translation is known.

Numbers come in families of near misses, as they do in a real archive: `45/2019/NĐ-CP` beside
`54/2019/NĐ-CP` (digits swapped), `45/2020/NĐ-CP` (another year), `45/2019/TT-BTC` (another kind)
and `145/2019/NĐ-CP`. A document often cites its own near misses. The queries that go with them:
the number as people type it (alone, with its kind, lower case, without diacritics), and natural
questions: a part of one of the document's sentences in Vietnamese, and the sentence in English.
"""

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from workers.core.access import AccessLevel

PAIRS = Path(__file__).resolve().parents[1] / "ops" / "bench" / "data" / "iwslt15-en-vi-tst2013.tsv"

# (suffix, kind of document, issuer, whether the number carries a year)
KINDS = [
    ("NĐ-CP", "NGHỊ ĐỊNH", "CHÍNH PHỦ", True),
    ("TT-BTC", "THÔNG TƯ", "BỘ TÀI CHÍNH", True),
    ("TT-BLĐTBXH", "THÔNG TƯ", "BỘ LAO ĐỘNG - THƯƠNG BINH VÀ XÃ HỘI", True),
    ("QĐ-TTg", "QUYẾT ĐỊNH", "THỦ TƯỚNG CHÍNH PHỦ", False),
    ("QĐ-UBND", "QUYẾT ĐỊNH", "ỦY BAN NHÂN DÂN TỈNH BÌNH DƯƠNG", True),
]
KIND_WORDS = {"NGHỊ ĐỊNH": "Nghị định", "THÔNG TƯ": "Thông tư", "QUYẾT ĐỊNH": "Quyết định"}


@dataclass(frozen=True)
class Number:
    number: int
    year: int
    kind: int  # index into KINDS

    def __str__(self) -> str:
        suffix, _, _, with_year = KINDS[self.kind]
        return f"{self.number:02d}/{self.year}/{suffix}" if with_year else f"{self.number}/{suffix}"

    @property
    def kind_word(self) -> str:
        return KIND_WORDS[KINDS[self.kind][1]]


@dataclass(frozen=True)
class LegalDocument:
    path: str  # relative to the corpus root, under the folder of its level
    number: Number
    level: AccessLevel
    text: str
    sentences: list[tuple[str, str]]  # (English, Vietnamese) of its articles


@dataclass(frozen=True)
class Query:
    query: str
    level: str
    expected_document: str
    kind: str  # "identifier", "natural_vi" or "natural_en"

    def to_dict(self) -> dict:
        return {"query": self.query, "level": self.level, "expected_document": self.expected_document}


def sentence_pairs() -> list[tuple[str, str]]:
    with PAIRS.open(encoding="utf-8", newline="") as file:
        return [(row["query"], row["positive"]) for row in csv.DictReader(file, delimiter="\t")]


def near_misses(base: Number) -> list[Number]:
    """Numbers a person could confuse with `base`: digits swapped, another year or kind, a digit more."""
    swapped = int(str(base.number)[::-1]) if base.number >= 10 else base.number + 10
    candidates = [
        Number(swapped, base.year, base.kind),
        Number(base.number, base.year + 1, base.kind),
        Number(base.number, base.year, (base.kind + 1) % len(KINDS)),
        Number(100 + base.number, base.year, base.kind),
    ]
    return [number for number in dict.fromkeys(candidates) if number != base and str(number) != str(base)]


def build(families: int, seed: int = 0, sentences_per_document: int = 10) -> list[LegalDocument]:
    """`families` groups of near-miss numbers, one document per number, from consecutive sentences."""
    rng = random.Random(seed)
    pairs = sentence_pairs()
    groups: list[list[Number]] = []
    used: set[str] = set()
    while len(groups) < families:
        base = Number(rng.randint(11, 98), rng.randint(2015, 2024), rng.randrange(len(KINDS)))
        family = [base, *near_misses(base)[:3]]
        if any(str(number) in used for number in family):
            continue
        used.update(str(number) for number in family)
        groups.append(family)
    numbers = [(number, family) for family in groups for number in family]
    need = sentences_per_document + 1
    if len(numbers) * need > len(pairs):
        raise ValueError(f"{len(numbers)} documents need {len(numbers) * need} sentences; there are {len(pairs)}")
    documents = []
    for index, (number, family) in enumerate(numbers):
        lines = pairs[index * need : (index + 1) * need]
        level = AccessLevel(rng.randrange(len(AccessLevel)))
        # Cited: a near miss of its own (the hard case) and a number of another family.
        near = family[(family.index(number) + 1) % len(family)]
        cited = [near, rng.choice([other for other, _ in numbers if other not in family])]
        text = _document_text(number, lines[0][1], lines[1:], cited, rng)
        path = f"{level.name}/{str(number).replace('/', '-')}.md"
        documents.append(LegalDocument(path, number, level, text, lines[1:]))
    return documents


def _document_text(
    number: Number, title: str, articles: list[tuple[str, str]], cited: list[Number], rng: random.Random
) -> str:
    _, kind, issuer, _ = KINDS[number.kind]
    day, month = rng.randint(1, 28), rng.randint(1, 12)
    preamble = [f"Căn cứ {other.kind_word} số {other};" for other in cited]
    body = [f"Điều {article}. {vi}" for article, (_, vi) in enumerate(articles, 1)]
    return "\n\n".join(
        [
            issuer,
            f"Số: {number}",
            f"Hà Nội, ngày {day} tháng {month} năm {number.year}",
            kind,
            title.rstrip("."),
            "Căn cứ Luật Tổ chức Chính phủ ngày 19 tháng 6 năm 2015;",
            *preamble,
            f"Ban hành {kind.lower()} này.",
            *body,
        ]
    )


def write(documents: list[LegalDocument], root: Path) -> None:
    """The documents under `root`, one folder per level with its `.fleet.yaml`."""
    for level in AccessLevel:
        folder = root / level.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".fleet.yaml").write_text(f"access_level: {level.name}\n", encoding="utf-8")
    for document in documents:
        (root / document.path).write_text(document.text + "\n", encoding="utf-8")


def queries(documents: list[LegalDocument], seed: int = 0) -> list[Query]:
    """For each document: its number as a person types it, and two natural questions."""
    rng = random.Random(seed)
    found = []
    for document in documents:
        level = document.level.name
        number = str(document.number)
        typed = rng.choice(
            [
                number,
                f"{document.number.kind_word} {number}",
                f"{document.number.kind_word.lower()} số {number.lower()} quy định gì",
                without_diacritics(number),
            ]
        )
        found.append(Query(typed, level, document.path, "identifier"))
        english, vietnamese = rng.choice(document.sentences)
        words = vietnamese.split()
        start = rng.randrange(max(1, len(words) - 8))
        found.append(Query(" ".join(words[start : start + 8]), level, document.path, "natural_vi"))
        found.append(Query(english, level, document.path, "natural_en"))
    return found


def without_diacritics(text: str) -> str:
    import unicodedata

    decomposed = unicodedata.normalize("NFD", text.replace("Đ", "D").replace("đ", "d"))
    return "".join(char for char in decomposed if not unicodedata.combining(char))
