"""The batch planner: a pure function from token lengths to batches under a token budget.

A padded batch costs `longest × count` tokens of compute (TEI's cost model), so items are
sorted by length and packed, longest first, while that product stays within the budget.
"""

from collections.abc import Sequence

from workers.errors import ChunkTooLong


def plan_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of `lengths` grouped into batches whose padded cost stays within `budget`."""
    too_long = [index for index, length in enumerate(lengths) if length > budget]
    if too_long:
        raise ChunkTooLong(
            f"{len(too_long)} item(s) longer than the batch budget of {budget} tokens "
            f"(longest {max(lengths[i] for i in too_long)}): raise FLEET_BATCH_TOKENS"
        )
    order = sorted(range(len(lengths)), key=lambda index: lengths[index], reverse=True)
    batches: list[list[int]] = []
    for index in order:
        # Sorted longest first, so a batch's first item is its longest: its padded width.
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= budget:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches
