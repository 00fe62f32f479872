"""The reconciler's planner: which pending chunks lost their task."""

from datetime import UTC, datetime, timedelta

import pytest

from workers.core.stores.lost import ORDER_MARGIN_S, cutoffs

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
AFTER = 60


def test_with_an_empty_queue_everything_sent_before_the_grace_is_lost():
    limits = cutoffs(NOW, consumed_sent_at=None, queue_depth=0, resend_after_s=AFTER)
    assert limits.sent_before == limits.never_sent_before == NOW - timedelta(seconds=AFTER)


def test_with_messages_waiting_only_what_was_sent_before_a_consumed_message_is_lost():
    consumed = NOW - timedelta(seconds=200)
    limits = cutoffs(NOW, consumed_sent_at=consumed, queue_depth=50, resend_after_s=AFTER)
    assert limits.sent_before == consumed - timedelta(seconds=ORDER_MARGIN_S)
    assert limits.never_sent_before == NOW - timedelta(seconds=AFTER)


def test_a_recent_consumed_message_never_shortens_the_grace():
    limits = cutoffs(NOW, consumed_sent_at=NOW, queue_depth=50, resend_after_s=AFTER)
    assert limits.sent_before == NOW - timedelta(seconds=AFTER)


@pytest.mark.parametrize("depth", [None, 7])
def test_without_a_consumed_message_nothing_sent_counts_as_lost_while_the_queue_may_hold_it(depth):
    limits = cutoffs(NOW, consumed_sent_at=None, queue_depth=depth, resend_after_s=AFTER)
    assert limits.sent_before < NOW - timedelta(days=365)
