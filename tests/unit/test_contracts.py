import pytest

from workers.core.contracts import EmbedResult, EmbedTask
from workers.core.errors import InvalidInput


def test_task_round_trips_through_kwargs():
    task = EmbedTask(3, ["0" * 32, "a" * 32])
    assert EmbedTask(**task.to_kwargs()) == task
    sent = EmbedTask(3, ["0" * 32], 1764373000.25)
    assert EmbedTask(**sent.to_kwargs()) == sent


@pytest.mark.parametrize(
    ("version", "ids", "sent_at"),
    [(0, [], None), (1, ["x"], None), (1, ["A" * 32], None), ("1", [], None), (1, [], "now")],
)
def test_malformed_tasks_are_refused(version, ids, sent_at):
    with pytest.raises(InvalidInput):
        EmbedTask(version, ids, sent_at)


def test_result_counts_are_named_in_its_dict():
    assert EmbedResult(2, 1, 3).to_dict() == {"embedded": 2, "skipped": 1, "failed": 3}
