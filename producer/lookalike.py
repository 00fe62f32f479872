"""Text compared as a person reads it: what looks like a level name or the level key is one.

A hostile or careless editor can write `director_only` so that it reads the same and compares
different: fullwidth letters (`ｄｉｒｅｃｔｏｒ＿ｏｎｌｙ`), a Cyrillic `о`, other case, a dash for
the underscore, a typo. Everything that decides whether text names a level goes through `fold`:
NFKC (compatibility forms to their letters), case folding, then each character that Unicode's
confusables table (UTS #39, through `confusable_homoglyphs`) says looks like an ASCII letter or
digit replaced by it. Two spellings that fold alike look alike to a reader.
"""

import re
import unicodedata
from functools import cache
from itertools import pairwise

from workers.core.access import AccessLevel

# Folded level names (`director_only`), highest first, and the level each names.
_LEVEL_WORDS = {level.name: level for level in sorted(AccessLevel, reverse=True)}
_NON_WORD = re.compile(r"[\W_]+")
# Level names this long tolerate two edits (`directr_only`, `director-onyl`); `public` none:
# it is a common word, and naming it never lifts a level.
_NEAR_MISS_MIN_LENGTH = 10


@cache
def _ascii_lookalikes() -> dict[str, str]:
    """Each non-ASCII character that looks like one ASCII letter or digit, mapped to it."""
    from confusable_homoglyphs.confusables import confusables_data  # 900 KB of JSON: loaded once, on demand

    table = {}
    for char, homoglyphs in confusables_data.items():
        if char.isascii():
            continue
        ascii_forms = [h["c"].lower() for h in homoglyphs if len(h["c"]) == 1 and h["c"].isascii() and h["c"].isalnum()]
        if ascii_forms:
            table[char] = next((form for form in ascii_forms if form.isalpha()), ascii_forms[0])
    return table


def fold(text: str) -> str:
    """NFKC, case-folded, look-alike characters as the ASCII they look like."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    if folded.isascii():
        return folded
    table = _ascii_lookalikes()
    return "".join(table.get(char, char) for char in folded)


def words(text: str) -> list[str]:
    """The folded words of `text` (letters and digits; `_`, `-`, spaces and punctuation split)."""
    return [word for word in _NON_WORD.split(fold(text)) if word]


def key_form(text: str) -> str:
    """`text` folded to one snake_case word: `Access-Level ` and `ａｃｃｅｓｓ　ｌｅｖｅｌ` give `access_level`."""
    return "_".join(words(text))


def level_named(text: str) -> AccessLevel | None:
    """The level that `text`, as a whole, names or nearly names (`Director Only`, `directr_only`,
    `director_оnly` with a Cyrillic о); None when it names none."""
    form = key_form(text)
    for name, level in _LEVEL_WORDS.items():
        if form == name or form.replace("_", "") == name.replace("_", ""):
            return level
        if len(name) >= _NEAR_MISS_MIN_LENGTH and distance(form, name) <= 2:
            return level
    return None


def levels_named_in(text: str) -> set[AccessLevel]:
    """Every level named anywhere in `text`, as one word or two (`for managers only`)."""
    parts = words(text)
    candidates = parts + [f"{a}_{b}" for a, b in pairwise(parts)]
    return {level for candidate in candidates if (level := level_named(candidate)) is not None}


def distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (adjacent transpositions count as one edit), capped at 3."""
    if abs(len(a) - len(b)) > 2:
        return 3  # farther than any near miss looked for
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            cost = char_a != char_b
            best = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                best = min(best, previous2[j - 2] + 1)
            current.append(best)
        previous2, previous = previous, current
    return min(previous[-1], 3)
