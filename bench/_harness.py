"""Interleaved timing, medians and the table printer shared by every section.

Each round runs every variant once, in an order rotated from round to round,
so all variants see the same load on a shared machine. A ratio is computed
inside each round, against the baseline measured in that same round, and the
median of those per-round ratios is reported.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

# A variant runs its operation ``n`` times and returns the elapsed nanoseconds,
# so it can keep its own setup out of the measurement.
SyncBatch = Callable[[int], int]
AsyncBatch = Callable[[int], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class Timings:
    """Per-operation times in nanoseconds, one figure per round and variant."""

    per_op: dict[str, list[float]]
    baseline: str

    def median(self, name: str) -> float:
        """Return the median per-operation time of ``name``, in nanoseconds."""
        return statistics.median(self.per_op[name])

    def ratios(self, name: str, baseline: str | None = None) -> list[float]:
        """Return ``name`` over ``baseline`` for each round."""
        base = self.per_op[baseline or self.baseline]
        return [value / ref for value, ref in zip(self.per_op[name], base, strict=True)]

    def ratio(self, name: str, baseline: str | None = None) -> float:
        """Return the median of the per-round ratios of ``name`` over ``baseline``."""
        return statistics.median(self.ratios(name, baseline))

    def ratio_spread(
        self, name: str, baseline: str | None = None
    ) -> tuple[float, float]:
        """Return the first and third quartiles of the per-round ratios."""
        values = self.ratios(name, baseline)
        if len(values) < 2:
            return values[0], values[0]
        quartiles = statistics.quantiles(values, n=4)
        return quartiles[0], quartiles[2]


def _order(names: Sequence[str], round_index: int) -> list[str]:
    shift = round_index % len(names)
    return [*names[shift:], *names[:shift]]


def _schedule(
    names: Sequence[str], per_op: dict[str, list[float]], rounds: int, warmup: int
) -> Iterator[tuple[str, list[float]]]:
    # Yield each variant to run, with the list its per-operation time goes to;
    # warm-up rounds get a list that is thrown away.
    for round_index in range(warmup + rounds):
        gc.collect()
        for name in _order(names, round_index):
            yield name, per_op[name] if round_index >= warmup else []


def interleave(
    variants: Mapping[str, SyncBatch], *, rounds: int, inner: int, warmup: int = 1
) -> Timings:
    """Time synchronous variants in interleaved rounds; the first is the baseline."""
    per_op: dict[str, list[float]] = {name: [] for name in variants}
    for name, results in _schedule(list(variants), per_op, rounds, warmup):
        results.append(variants[name](inner) / inner)
    return Timings(per_op, next(iter(variants)))


async def ainterleave(
    variants: Mapping[str, AsyncBatch], *, rounds: int, inner: int, warmup: int = 1
) -> Timings:
    """Time asynchronous variants in interleaved rounds, in the running loop."""
    per_op: dict[str, list[float]] = {name: [] for name in variants}
    for name, results in _schedule(list(variants), per_op, rounds, warmup):
        results.append(await variants[name](inner) / inner)
    return Timings(per_op, next(iter(variants)))


def timed(func: Callable[[], object], n: int) -> int:
    """Call ``func`` ``n`` times and return the elapsed nanoseconds."""
    start = time.perf_counter_ns()
    for _ in range(n):
        func()
    return time.perf_counter_ns() - start


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of ``values`` (``fraction`` in 0..1)."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Table:
    """A Markdown table printed at the end of a section."""

    title: str
    columns: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        self.rows.append(cells)

    def render(self) -> str:
        widths = [len(column) for column in self.columns]
        for row in self.rows:
            widths = [
                max(width, len(cell)) for width, cell in zip(widths, row, strict=True)
            ]

        def line(cells: Sequence[str]) -> str:
            padded = (
                cell.ljust(width) for cell, width in zip(cells, widths, strict=True)
            )
            return "| " + " | ".join(padded) + " |"

        out = [f"### {self.title}", "", line(self.columns)]
        out.append("|" + "|".join("-" * (width + 2) for width in widths) + "|")
        out.extend(line(row) for row in self.rows)
        if self.notes:
            out.append("")
            out.extend(self.notes)
        return "\n".join(out)


def add_timing_rows(
    table: Table, timings: Timings, targets: Mapping[str, float]
) -> None:
    """Add one row per variant: median time, median ratio, its quartiles and,
    for the variants in ``targets``, whether the ratio is at most the target."""
    for name in timings.per_op:
        ratio = timings.ratio(name)
        low, high = timings.ratio_spread(name)
        target = ""
        if name in targets:
            target = f"<= {targets[name]}: {verdict(ratio, targets[name])}"
        table.add(
            name,
            micros(timings.median(name)),
            f"{ratio:.2f}",
            f"{low:.2f}-{high:.2f}",
            target,
        )


def micros(nanoseconds: float) -> str:
    """Format nanoseconds as microseconds with two decimals."""
    return f"{nanoseconds / 1000:.2f}"


def verdict(value: float, target: float, *, at_most: bool = True) -> str:
    """Return ``met`` or ``missed`` for a figure against its target."""
    ok = value <= target if at_most else value >= target
    return "met" if ok else "missed"


class CheckFailed(Exception):
    """Raised when a benchmark's result is wrong (a correctness check, not speed)."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`CheckFailed` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message)
