"""Pareto front of points with a cost to minimise and a value to maximise."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["pareto_front"]


def pareto_front(costs: Sequence[float], values: Sequence[float]) -> list[bool]:
    """Flag the points that no other point dominates.

    Point j dominates point i when cost_j <= cost_i and value_j >= value_i
    with at least one of the two strict. Points with equal cost and value
    are all on the front when none of them is dominated. Runs in
    O(n log n): after sorting by cost (then by value, highest first), a
    point is on the front when its value beats every value before it, or
    ties the best value among points of the same cost.

    Raises ValueError when the sequences differ in length.
    """
    if len(costs) != len(values):
        raise ValueError(
            f"costs and values differ in length: {len(costs)} and {len(values)}"
        )
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -values[i]))
    on_front = [False] * len(costs)
    best_before = float("-inf")
    position = 0
    while position < len(order):
        # Points of equal cost form one group; only its highest value counts.
        group_end = position
        cost = costs[order[position]]
        while group_end < len(order) and costs[order[group_end]] == cost:
            group_end += 1
        top = values[order[position]]
        if top > best_before:
            for i in order[position:group_end]:
                on_front[i] = values[i] == top
            best_before = top
        position = group_end
    return on_front
