"""The one access decision and what it reads: front matter, control files, first lines, paths."""

import pytest

from producer.declarations import (
    Declaration,
    claims,
    examine,
    folder_rules_error,
    head,
    looks_like_level_key,
    numbered,
    read_control_file,
    read_front_matter,
)
from producer.levels import LevelRefused, Place, decide
from producer.lookalike import fold, level_named, levels_named_in
from producer.safe_yaml import YamlRefused, load_mapping
from workers.core.access import AccessLevel
from workers.core.errors import InvalidInput

PUBLIC_FOLDER = Declaration(".fleet.yaml", AccessLevel.public)


def level_of(text: str, inherited: Declaration | None = PUBLIC_FOLDER, default: AccessLevel | None = None):
    """The level a Markdown text in a folder of `inherited` rules gets (raises LevelRefused)."""
    front = read_front_matter(text)
    own = [front.declaration] if front.declaration else []
    found = claims(front.fenced, "line") + claims(head(front.body), "line")
    return decide([Place("a.md", None, inherited)], own, found, default).level


def test_front_matter_declares_level_and_metadata():
    front = read_front_matter("---\ntitle: Budget\naccess_level: manager_only\n---\n# Budget\n")
    assert (front.declaration.level, front.declaration.metadata, front.body) == (
        AccessLevel.manager_only,
        {"title": "Budget"},
        "# Budget\n",
    )
    assert read_front_matter("# Title\n\nBody.\n").declaration is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("--- \naccess_level: director_only\n---\nSecret", "is not read as a declaration"),
        ("\n---\naccess_level: director_only\n---\nSecret", "is not read as a declaration"),
        ("---\nAccess_Level: director_only\n---\nSecret", "looks like 'access_level'"),
        ("---\naccess-level: director_only\n---\nSecret", "looks like 'access_level'"),
        ("---\nacess_level: director_only\n---\nSecret", "looks like 'access_level'"),
        ("---\nlevle: director_only\n---\nSecret", "looks like 'access_level'"),
        ("---\nclassification: Director Only\n---\nSecret", "names director_only"),
        ("---\naccess_level: public\naccess_level: director_only\n---\nSecret", "twice"),
        ("---\naccess_level: secret\n---\nText", "unknown access level 'secret'"),
        ("---\naccess_level: [public]\n---\nText", "unknown access level"),
        ("---\naccess_level: public\nText without closing", "never closed"),
        ("---\n- a list\n---\nText", "mapping"),
        ("---\naccess_level: [unclosed\n---\nText", "not valid YAML"),
        ("access_level: director_only\n\nSecret text with no fence at all.", "is not read as a declaration"),
    ],
)
def test_what_looks_like_a_level_but_is_not_read_as_one_is_refused(text, reason):
    with pytest.raises(LevelRefused, match=reason):
        level_of(text)


# Each way a careless or hostile editor wrote director_only that was once not read and not refused.
@pytest.mark.parametrize(
    "text",
    [
        "---\nａｃｃｅｓｓ＿ｌｅｖｅｌ: ｄｉｒｅｃｔｏｒ＿ｏｎｌｙ\n---\nBody",  # fullwidth key and value
        "---\naccess_level: ｄｉｒｅｃｔｏｒ＿ｏｎｌｙ\n---\nBody",  # fullwidth value
        "---\nаccess_level: director_only\n---\nBody",  # a Cyrillic а in the key
        "---\nsecurity: {access_level: director_only}\n---\nBody",  # nested
        "---\nsecurity:\n  level: director_only\n---\nBody",  # nested near miss
        "---\nclassification: [director_only]\n---\nBody",  # in a list
        "---\ntags: [board, director_оnly]\n---\nBody",  # a Cyrillic о in a value
        "---\naccess_level: public\n# access_level: director_only\n---\nBody",  # a YAML comment
        '+++\ntitle = "Q3"\naccess_level = "director_only"\n+++\nBody',  # TOML front matter
        ';;;\n{"access_level": "director_only"}\n;;;\nBody',  # JSON front matter
        '{\n  "title": "Q3",\n  "access_level": "director_only"\n}\nBody',  # JSON front matter
        "<!-- access_level: director_only -->\n# Q3 results\nBody",  # an HTML comment
        "# Q3 results\n\n**Access level:** director_only\n\nBody",  # bold in the first lines
        "| Field | Value |\n| --- | --- |\n| Access level | Director Only |\n\nBody",  # a table row
        "Mức truy cập: director_only\n\nNội dung.",  # Vietnamese key
        "\n\n\n\n\n\n\n\n\n\n\n\nAudience: managers only\n\nBody",  # after blank lines
    ],
)
def test_every_spelling_of_a_higher_level_refuses_a_public_document(text):
    with pytest.raises(LevelRefused):
        level_of(text)


def test_a_claim_that_matches_the_level_is_accepted():
    assert level_of("Access level: public\n\nBody") is AccessLevel.public
    director = Declaration(".fleet.yaml", AccessLevel.director_only)
    assert level_of("<!-- access_level: director_only -->\nBody", director) is AccessLevel.director_only
    assert level_of("---\ntags: [director_only]\naccess_level: director_only\n---\nBody") is AccessLevel.director_only
    with pytest.raises(LevelRefused, match="says 'Access level: public'"):
        level_of("Access level: public\n\nBody", director)  # a claim that is not the level refuses either way


def test_ordinary_first_lines_are_no_claims():
    text = "# Annual leave\n\nNote: only directors may approve it.\nTitle: Leave policy\nLevel 3 of the building"
    assert level_of(text) is AccessLevel.public
    assert claims(numbered(["Ngày hiệu lực: 01/01/2025", "Đối tượng: toàn công ty"]), "line") == []


def test_folding_sees_what_a_reader_sees():
    assert fold("ａｃｃｅｓｓ＿ｌｅｖｅｌ") == "access_level"
    assert fold("dіrector_оnly") == "director_only"  # Cyrillic і and о
    assert fold("Mức Truy Cập") == "mức truy cập"  # Vietnamese letters are kept
    assert level_named("Director-Only") is AccessLevel.director_only
    assert level_named("directr_only") is AccessLevel.director_only
    assert level_named("directoronly") is AccessLevel.director_only
    assert level_named("director") is None and level_named("publish") is None
    assert levels_named_in("for managers only, not for the director") == {AccessLevel.manager_only}


@pytest.mark.parametrize(
    "key",
    ["Access_Level", "ACCESS-LEVEL", "access level", "acess_level", "access_levle", "levle", "ａｃｃｅｓｓ_level"],
)
def test_near_misses_of_the_level_key(key):
    assert looks_like_level_key(key)


@pytest.mark.parametrize("key", ["access_level", "title", "label", "department", "author", "language", "tags"])
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
    link = tmp_path / "link.meta.yaml"
    link.symlink_to(good)
    assert "cannot read it" in read_control_file(link, "link.meta.yaml").error  # never through a link


def test_folder_rules_that_name_a_higher_level_than_they_declare_are_errors(tmp_path):
    rules = tmp_path / ".fleet.yaml"
    rules.write_text("access_level: public\nnote: this folder is director_only\n")
    assert "names director_only" in folder_rules_error(read_control_file(rules, ".fleet.yaml")).error
    rules.write_text("access_level: director_only\nnote: director only\n")
    assert folder_rules_error(read_control_file(rules, ".fleet.yaml")).error is None


def test_the_most_specific_declaration_wins():
    own = Declaration("front matter", AccessLevel.director_only)
    sidecar = Declaration("a.md.meta.yaml", AccessLevel.director_only, {"owner": "board"})
    folder = Declaration("docs/.fleet.yaml", AccessLevel.employee_only)
    assert decide([Place("a.md", None, folder)], [own], [], AccessLevel.public).level is AccessLevel.director_only
    assert decide([Place("a.md", sidecar, folder)], [], [], None).metadata == {"owner": "board"}
    public_sidecar = Declaration("a.md.meta.yaml", AccessLevel.public)
    director_folder = Declaration("secret/.fleet.yaml", AccessLevel.director_only)
    assert decide([Place("a.md", public_sidecar, director_folder)], [], [], None).level is AccessLevel.public
    assert decide([Place("a.md", None, folder)], [Declaration("front matter")], [], None).source == "docs/.fleet.yaml"
    assert decide([Place("a.md", None, None)], [], [], AccessLevel.manager_only).source == "--level"


def test_a_document_reached_by_several_paths_gets_the_highest_level():
    real = Place("secret/q3/report.md", None, Declaration("secret/.fleet.yaml", AccessLevel.director_only))
    alias = Place("a-alias/report.md", None, Declaration(".fleet.yaml", AccessLevel.public))
    resolved = decide([real, alias], [], [], None)
    assert resolved.level is AccessLevel.director_only and "highest of 2 paths" in resolved.source
    assert decide([alias, real], [], [], None).level is AccessLevel.director_only
    broken = Place("b/report.md", Declaration("b/report.md.meta.yaml", error="unknown access level 'x'"), None)
    with pytest.raises(LevelRefused, match="unknown access level"):
        decide([real, broken], [], [], None)  # a path that cannot be read refuses the document


def test_resolution_fails_closed():
    with pytest.raises(LevelRefused, match="no access level"):
        decide([Place("a.md", None, None)], [], [], None)
    with pytest.raises(LevelRefused, match="conflicting access levels"):
        decide(
            [Place("a.md", Declaration("a.md.meta.yaml", AccessLevel.public), None)],
            [Declaration("front matter", AccessLevel.director_only)],
            [],
            None,
        )
    broken_rules = Declaration("docs/.fleet.yaml", error="is not valid YAML")
    with pytest.raises(LevelRefused, match=r"docs/\.fleet\.yaml: is not valid YAML"):
        decide([Place("a.md", None, broken_rules)], [], [], AccessLevel.public)  # never falls to --level
    broken_sidecar = Declaration("a.pdf.meta.yaml", error="unknown access level 'x'")
    with pytest.raises(LevelRefused, match=r"a\.pdf\.meta\.yaml"):
        decide([Place("a.pdf", broken_sidecar, Declaration(".fleet.yaml", AccessLevel.director_only))], [], [], None)
    with pytest.raises(LevelRefused, match="no path"):
        decide([], [], [], AccessLevel.public)


def test_a_named_level_refuses_only_when_it_is_relied_on():
    named = examine({"access_level": "public", "note": "was director only"}, "docs/.fleet.yaml")
    with pytest.raises(LevelRefused, match="names director_only"):
        decide([Place("a.md", None, named)], [], [], None)
    own = Declaration("a.md.meta.yaml", AccessLevel.director_only)
    assert decide([Place("a.md", own, named)], [], [], None).level is AccessLevel.director_only


def test_access_level_names_are_exact():
    assert AccessLevel.parse("director_only") == 3
    assert AccessLevel.public < AccessLevel.employee_only < AccessLevel.manager_only < AccessLevel.director_only
    with pytest.raises(InvalidInput, match="use one of public, employee_only"):
        AccessLevel.parse("admin")
