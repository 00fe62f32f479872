import pytest

from workers.batching import plan_batches
from workers.core.errors import ChunkTooLong


@pytest.mark.parametrize(
    ("lengths", "budget", "expected"),
    [
        ([], 100, []),
        ([10], 100, [[0]]),
        ([10, 10, 10], 30, [[0, 1, 2]]),
        ([10, 10, 10], 29, [[0, 1], [2]]),
        # longest first; padded cost max_len × n decides where a batch ends
        ([5, 50, 20, 50], 100, [[1, 3], [2, 0]]),
        ([100, 1, 1, 1], 100, [[0], [1, 2, 3]]),
    ],
)
def test_plan_batches_table(lengths, budget, expected):
    assert plan_batches(lengths, budget) == expected


def test_every_item_once_and_padded_cost_within_budget():
    lengths = [(i * 37) % 900 + 100 for i in range(500)]
    batches = plan_batches(lengths, 8192)
    assert sorted(i for batch in batches for i in batch) == list(range(500))
    for batch in batches:
        assert max(lengths[i] for i in batch) * len(batch) <= 8192


def test_item_longer_than_budget_is_a_typed_error():
    with pytest.raises(ChunkTooLong, match="FLEET_BATCH_TOKENS"):
        plan_batches([10, 2000], 1024)


@pytest.mark.parametrize(
    ("lengths", "budget", "expected"),
    [
        ([10, 10, 10], 30, [[0, 1, 2]]),
        ([5, 50, 20, 50], 100, [[1, 3], [2, 0]]),
        # packed: the sum counts, so short items fill what padding would have wasted
        ([100, 1, 1, 1], 103, [[0, 1, 2, 3]]),
        ([60, 30, 30, 10], 70, [[0], [1, 2, 3]]),
    ],
)
def test_packed_batches_cost_the_sum_of_lengths(lengths, budget, expected):
    assert plan_batches(lengths, budget, packed=True) == expected
