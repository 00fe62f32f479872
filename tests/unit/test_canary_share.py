"""Which keys a canary answers: a stable share, drawn afresh for each canary."""

import pytest

from producer.api.canary import answers_from_canary

KEYS = [f"app-{number:04d}" for number in range(1000)]


@pytest.mark.parametrize("canary_id", [2, 7, 31, 1000])
@pytest.mark.parametrize("percent", [1, 10, 50])
def test_the_share_of_1000_keys_is_within_5_points_of_the_percent(canary_id, percent):
    taken = sum(answers_from_canary(canary_id, key, percent) for key in KEYS)
    assert abs(100 * taken / len(KEYS) - percent) <= 5


def test_a_key_always_gets_the_same_answer_and_a_new_canary_draws_again():
    first = [answers_from_canary(2, key, 10) for key in KEYS]
    assert first == [answers_from_canary(2, key, 10) for key in KEYS]
    assert first != [answers_from_canary(3, key, 10) for key in KEYS]


def test_a_larger_share_keeps_every_key_it_had():
    for key in KEYS:
        if answers_from_canary(2, key, 10):
            assert answers_from_canary(2, key, 25)


def test_all_and_none():
    assert all(answers_from_canary(5, key, 100) for key in KEYS)
    assert not any(answers_from_canary(5, key, 0.001) for key in KEYS[:100])
