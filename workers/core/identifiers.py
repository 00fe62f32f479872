"""Identifiers in text, kept whole for keyword search: document numbers, codes, form numbers.

A dense model sees `45/2019/NĐ-CP` and `54/2019/NĐ-CP` as almost the same point, and Milvus's
standard analyser splits both into `45 2019 nđ cp`, so the number a person typed is matched by
every document that shares its parts. Each identifier is therefore also written as one token
(`45_2019_nd_cp`: the standard analyser keeps letters and digits joined by `_` together) into a
field of its own, searched beside the text.

Folded so that what people type finds what was written: case, diacritics and `đ` (`ND-CP` finds
`NĐ-CP`), the separator (`/`, `-` or `.`: `45-2019` finds `45/2019`) and leading zeros
(`7/2021/TT-BTC` finds `07/2021/TT-BTC`). A text's identifiers also include their leading parts
(`45/2019`, `45/2019/NĐ`), so that the short form people use finds the full number; a query's are
taken as typed.
"""

import re
import unicodedata

# Words joined by separators: `45/2019/NĐ-CP`, `HD-2024-0157`, `QH14`, `v2.3`.
_CANDIDATE = re.compile(r"\w+(?:[/.\-\u2010-\u2013]\w+)*")
_PART_SEPARATOR = re.compile(r"[/.\-\u2010-\u2013_]")
_LETTER = re.compile(r"[^\W\d_]")
_DIGIT = re.compile(r"\d")
# Longer is not a code a person types (a URL, a hash): left to the text field.
MAX_IDENTIFIER_CHARS = 64
# A chunk's identifier field is bounded whatever its text holds.
MAX_IDENTIFIERS = 256
# The part of a document where its own number stands (`Số: 45/2019/NĐ-CP` under the issuer).
DOCUMENT_HEAD_CHARS = 400
# A document's own numbers count this many times in each of its chunks: a text that cites the
# number once ranks below the document that bears it.
OWN_NUMBER_WEIGHT = 3


def fold(identifier: str) -> str:
    """One token for an identifier: `45/2019/NĐ-CP` -> `45_2019_nd_cp`."""
    return "_".join(_fold_part(part) for part in _PART_SEPARATOR.split(identifier) if part)


def _fold_part(part: str) -> str:
    decomposed = unicodedata.normalize("NFD", part.casefold().replace("đ", "d"))
    ascii_like = "".join(char for char in decomposed if not unicodedata.combining(char))
    return (ascii_like.lstrip("0") or "0") if ascii_like.isdigit() else ascii_like


def _is_identifier(candidate: str) -> bool:
    """A code rather than a word or an amount: letters with digits (`QH14`, `NĐ-CP` under a number),
    or numbers joined by `/` or `-` (`45/2019`, a date); not `1.000.000` nor `2.1`."""
    if len(candidate) > MAX_IDENTIFIER_CHARS or not _DIGIT.search(candidate):
        return False
    if _LETTER.search(candidate):
        return True
    return any(separator in candidate for separator in "/-\u2010\u2011\u2012\u2013")


def query_identifiers(text: str) -> list[str]:
    """The folded identifiers a query holds, as typed (no leading parts), in order, once each."""
    return list(dict.fromkeys(fold(candidate) for candidate in _candidates(text)))[:MAX_IDENTIFIERS]


def text_identifiers(text: str) -> list[str]:
    """The folded identifiers of a text and their leading parts, in order, once each."""
    found: dict[str, None] = {}
    for candidate in _candidates(text):
        found.update(dict.fromkeys(_with_leading_parts(fold(candidate))))
        if len(found) >= MAX_IDENTIFIERS:
            break
    return list(found)[:MAX_IDENTIFIERS]


def _with_leading_parts(folded: str) -> list[str]:
    """`45_2019_nd_cp` and its leading parts that hold a digit: `45_2019_nd`, `45_2019`."""
    parts = folded.split("_")
    leading = ["_".join(parts[:end]) for end in range(len(parts) - 1, 1, -1)]
    return [folded, *(prefix for prefix in leading if _DIGIT.search(prefix))]


def own_numbers(source_path: str, head: str) -> list[str]:
    """A document's own numbers: identifiers with letters in its file name, and the first one in
    its head (where an official document states its number, before any text it cites)."""
    stem = source_path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    in_name = [fold(candidate) for candidate in _candidates(stem) if _LETTER.search(candidate)]
    # `nghi-dinh-45-2019-nd-cp.pdf`: the number starts at the first part with a digit.
    in_name += [_from_first_digit(folded) for folded in in_name]
    in_head = [fold(candidate) for candidate in _candidates(head[:DOCUMENT_HEAD_CHARS]) if _LETTER.search(candidate)]
    return [number for number in dict.fromkeys(in_name + in_head[:1]) if _DIGIT.search(number)]


def _from_first_digit(folded: str) -> str:
    parts = folded.split("_")
    first = next(index for index, part in enumerate(parts) if _DIGIT.search(part))
    return "_".join(parts[first:])


def for_chunk(text: str, source_path: str, head: str) -> str:
    """What a chunk's identifier field holds, as space-separated tokens: its document's own
    numbers (`head`: the start of the document's text), weighted, and the chunk's identifiers."""
    own = [token for number in own_numbers(source_path, head) for token in _with_leading_parts(number)]
    return " ".join([*own * OWN_NUMBER_WEIGHT, *text_identifiers(text)])


def _candidates(text: str) -> list[str]:
    text = unicodedata.normalize("NFC", text)
    return [match.group() for match in _CANDIDATE.finditer(text) if _is_identifier(match.group())]
