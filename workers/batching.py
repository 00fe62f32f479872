"""The batch planner: a pure function from token lengths to batches under a token budget.

A padded batch costs `longest × count` tokens of compute (TEI's cost model); a packed batch
(sequences concatenated, varlen attention) costs the sum of its lengths. Items are sorted by
length and packed, longest first, while the cost stays within the budget.
"""

from collections.abc import Sequence

from workers.core.errors import ChunkTooLong


def plan_batches(lengths: Sequence[int], budget: int, packed: bool = False) -> list[list[int]]:
    """Indices of `lengths` grouped into batches whose cost stays within `budget`."""
    too_long = [index for index, length in enumerate(lengths) if length > budget]
    if too_long:
        raise ChunkTooLong(
            f"{len(too_long)} item(s) longer than the batch budget of {budget} tokens "
            f"(longest {max(lengths[i] for i in too_long)}): raise FLEET_BATCH_TOKENS"
        )
    order = sorted(range(len(lengths)), key=lambda index: lengths[index], reverse=True)
    batches: list[list[int]] = []
    total = 0  # tokens in the open batch
    for index in order:
        if batches and _cost(lengths[batches[-1][0]], len(batches[-1]) + 1, total + lengths[index], packed) <= budget:
            batches[-1].append(index)
            total += lengths[index]
        else:
            batches.append([index])
            total = lengths[index]
    return batches


def _cost(longest: int, count: int, total: int, packed: bool) -> int:
    # Sorted longest first, so a batch's first item is its longest: its padded width.
    return total if packed else longest * count
