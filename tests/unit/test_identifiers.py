"""Identifiers kept whole: what a person types finds what a document was written with, and a
near miss stays another token."""

import unicodedata

import pytest

from workers.core import identifiers


@pytest.mark.parametrize(
    ("typed", "written"),
    [
        ("45/2019/NĐ-CP", "45/2019/NĐ-CP"),
        ("45/2019/ND-CP", "45/2019/NĐ-CP"),  # no Vietnamese keyboard
        ("45/2019/nđ-cp", "45/2019/NĐ-CP"),
        ("7/2021/TT-BTC", "07/2021/TT-BTC"),  # the leading zero left out
        ("1234-QĐ-TTg", "1234/QĐ-TTg"),
        (unicodedata.normalize("NFD", "45/2019/NĐ-CP"), "45/2019/NĐ-CP"),
    ],
)
def test_what_people_type_folds_to_what_was_written(typed, written):
    assert identifiers.query_identifiers(typed) == [identifiers.fold(written)]
    assert identifiers.fold(written) in identifiers.text_identifiers(f"Căn cứ Nghị định số {written}.")


@pytest.mark.parametrize(
    ("number", "near_miss"),
    [("45/2019/NĐ-CP", "54/2019/NĐ-CP"), ("45/2019/NĐ-CP", "45/2020/NĐ-CP"), ("45/2019/NĐ-CP", "45/2019/TT-BTC")],
)
def test_a_near_miss_is_another_token(number, near_miss):
    (token,) = identifiers.query_identifiers(number)
    assert token not in identifiers.text_identifiers(f"Số: {near_miss}")


def test_a_text_holds_the_leading_parts_of_its_numbers():
    found = identifiers.text_identifiers("Thông tư 07/2021/TT-BTC và hợp đồng HD-2024-0157.")
    assert found == ["7_2021_tt_btc", "7_2021_tt", "7_2021", "hd_2024_157", "hd_2024"]
    assert identifiers.query_identifiers("thông tư 7/2021") == ["7_2021"]  # the short form finds it


@pytest.mark.parametrize("text", ["1.000.000 đồng", "Điều 2.1", "năm 2019", "Điều 45", "nghỉ phép năm"])
def test_amounts_numbers_and_words_are_not_identifiers(text):
    assert identifiers.text_identifiers(text) == []


def test_a_document_s_own_number_is_in_its_head_or_its_name():
    head = "CHÍNH PHỦ\n\nSố: 45/2019/NĐ-CP\n\nCăn cứ Nghị định số 54/2019/NĐ-CP;"
    assert identifiers.own_numbers("legal/decree.md", head) == ["45_2019_nd_cp"]  # not what it cites
    assert identifiers.own_numbers("legal/nghi-dinh-45-2019-nd-cp.pdf", "") == [
        "nghi_dinh_45_2019_nd_cp",
        "45_2019_nd_cp",
    ]
    assert identifiers.own_numbers("notes/meeting.md", "Minutes of the meeting") == []


def test_a_chunk_weighs_its_documents_number_above_what_it_cites():
    tokens = identifiers.for_chunk("Căn cứ Nghị định số 54/2019/NĐ-CP;", "legal/a.md", "Số: 45/2019/NĐ-CP").split()
    assert tokens.count("45_2019_nd_cp") == identifiers.OWN_NUMBER_WEIGHT
    assert tokens.count("54_2019_nd_cp") == 1


def test_the_field_is_bounded_whatever_the_text():
    text = " ".join(f"HD-{number}" for number in range(10_000))
    assert len(identifiers.text_identifiers(text)) == identifiers.MAX_IDENTIFIERS
    assert identifiers.text_identifiers("x" * 100 + "-1") == []  # too long to be a code
