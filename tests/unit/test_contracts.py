import pytest

from workers.contracts import EmbedResult, EmbedTask
from workers.errors import InvalidInput


def test_task_round_trips_through_kwargs():
    task = EmbedTask(3, ["0" * 32, "a" * 32])
    assert EmbedTask(**task.to_kwargs()) == task


@pytest.mark.parametrize(("version", "ids"), [(0, []), (1, ["x"]), (1, ["A" * 32]), ("1", [])])
def test_malformed_tasks_are_refused(version, ids):
    with pytest.raises(InvalidInput):
        EmbedTask(version, ids)


def test_result_counts_are_named_in_its_dict():
    assert EmbedResult(2, 1, 3).to_dict() == {"embedded": 2, "skipped": 1, "failed": 3}
