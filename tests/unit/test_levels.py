"""Level declarations: front matter, control files, precedence, and every way to fail closed."""

import pytest

from producer.levels import (
    Declaration,
    LevelRefused,
    looks_like_level_key,
    read_control_file,
    resolve,
    split_front_matter,
)
from producer.safe_yaml import YamlRefused, load_mapping
from workers.access import AccessLevel
from workers.errors import InvalidInput


def test_front_matter_declares_level_and_metadata():
    found, body = split_front_matter("---\ntitle: Budget\naccess_level: manager_only\n---\n# Budget\n")
    assert (found.level, found.metadata, body) == (AccessLevel.manager_only, {"title": "Budget"}, "# Budget\n")


def test_no_front_matter_is_no_declaration():
    assert split_front_matter("# Title\n\nBody.\n") == (None, "# Title\n\nBody.\n")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("--- \naccess_level: director_only\n---\nSecret", "exactly '---'"),
        ("\n---\naccess_level: director_only\n---\nSecret", "exactly '---'"),
        ("---\nAccess_Level: director_only\n---\nSecret", "looks like 'access_level'"),
        ("---\naccess-level: director_only\n---\nSecret", "looks like 'access_level'"),
        ("---\nacess_level: director_only\n---\nSecret", "looks like 'access_level'"),
        ("---\nlevle: director_only\n---\nSecret", "looks like 'access_level'"),
        ("---\nclassification: Director Only\n---\nSecret", "holds the level"),
        ("---\naccess_level: public\naccess_level: director_only\n---\nSecret", "twice"),
        ("---\naccess_level: secret\n---\nText", "unknown access level 'secret'"),
        ("---\naccess_level: [public]\n---\nText", "unknown access level"),
        ("---\naccess_level: public\nText without closing", "never closed"),
        ("---\n- a list\n---\nText", "mapping"),
        ("---\naccess_level: [unclosed\n---\nText", "not valid YAML"),
        ("access_level: director_only\n\nSecret text with no fence at all.", "outside front matter"),
    ],
)
def test_what_looks_like_a_level_but_is_not_read_as_one_is_refused(text, reason):
    with pytest.raises(LevelRefused, match=reason):
        split_front_matter(text)


def test_a_loose_fence_without_a_level_is_just_text():
    assert split_front_matter("--- \nnot a declaration\n---\nBody")[0] is None


@pytest.mark.parametrize(
    "key", ["Access_Level", "ACCESS-LEVEL", "access level", "acess_level", "access_levle", "levle"]
)
def test_near_misses_of_the_level_key(key):
    assert looks_like_level_key(key)


@pytest.mark.parametrize("key", ["access_level", "title", "label", "department", "author", "language"])
def test_ordinary_keys_are_not_near_misses(key):
    assert not looks_like_level_key(key)


def test_yaml_alias_bomb_and_recursive_aliases_are_refused_quickly():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    assert len(bomb) < 1000
    with pytest.raises(YamlRefused, match="expands to more than"):
        load_mapping(bomb, "front matter")
    with pytest.raises(YamlRefused, match="recursive"):
        load_mapping("a: &a [*a]\n", "front matter")


def test_yaml_size_bound():
    with pytest.raises(YamlRefused, match="larger than"):
        load_mapping("notes: " + "x" * 70_000, "front matter")


def test_yaml_values_become_json_safe():
    mapping = load_mapping("date: 2024-05-01\nratio: .nan\nbig: .inf\nn: 3\nok: true\nlist: [1, a]\n", "front matter")
    assert mapping == {"date": "2024-05-01", "ratio": "nan", "big": "inf", "n": 3, "ok": True, "list": [1, "a"]}
    with pytest.raises(YamlRefused, match="NUL"):
        load_mapping('title: "a\\0b"\n', "front matter")
    with pytest.raises(YamlRefused, match="binary"):
        load_mapping("blob: !!binary aGVsbG8=\n", "front matter")


def test_control_file_problems_are_errors_not_exceptions(tmp_path):
    good = tmp_path / "a.pdf.meta.yaml"
    good.write_text("access_level: director_only\ntitle: Board minutes\n")
    declared = read_control_file(good, "a.pdf.meta.yaml")
    assert (declared.level, declared.error) == (AccessLevel.director_only, None)
    assert declared.metadata == {"title": "Board minutes"}
    bad = tmp_path / ".fleet.yaml"
    for content, reason in [
        (b"access_level: topsecret\n", "unknown access level"),
        (b"Access_Level: director_only\n", "looks like"),
        (b"\xff\xfe not utf-8", "not UTF-8"),
        (b"x: " + b"y" * 70_000, "larger than"),
    ]:
        bad.write_bytes(content)
        assert reason in read_control_file(bad, ".fleet.yaml").error


def test_the_most_specific_declaration_wins():
    own = Declaration("front matter", AccessLevel.director_only)
    sidecar = Declaration("a.md.meta.yaml", AccessLevel.director_only, {"owner": "board"})
    folder = Declaration("docs/.fleet.yaml", AccessLevel.employee_only)
    assert resolve([own], folder, AccessLevel.public).level is AccessLevel.director_only
    assert resolve([sidecar], folder, AccessLevel.public).metadata == {"owner": "board"}
    assert resolve([Declaration("front matter")], folder, AccessLevel.public).source == "docs/.fleet.yaml"
    assert resolve([], None, AccessLevel.manager_only).source == "--level"


def test_resolution_fails_closed():
    with pytest.raises(LevelRefused, match="no access level"):
        resolve([], None, None)
    with pytest.raises(LevelRefused, match="conflicting access levels"):
        resolve(
            [Declaration("a.md.meta.yaml", AccessLevel.public), Declaration("front matter", AccessLevel.director_only)],
            None,
            None,
        )
    broken_rules = Declaration("docs/.fleet.yaml", error="is not valid YAML")
    with pytest.raises(LevelRefused, match=r"docs/\.fleet\.yaml: is not valid YAML"):
        resolve([], broken_rules, AccessLevel.public)  # never falls through to --level
    broken_sidecar = Declaration("a.pdf.meta.yaml", error="unknown access level 'x'")
    with pytest.raises(LevelRefused, match=r"a\.pdf\.meta\.yaml"):
        resolve([broken_sidecar], Declaration(".fleet.yaml", AccessLevel.director_only), None)


def test_access_level_names_are_exact():
    assert AccessLevel.parse("director_only") == 3
    assert AccessLevel.public < AccessLevel.employee_only < AccessLevel.manager_only < AccessLevel.director_only
    with pytest.raises(InvalidInput, match="use one of public, employee_only"):
        AccessLevel.parse("admin")
