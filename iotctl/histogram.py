"""A latency histogram in the manner of HdrHistogram: log-linear buckets (each power of
two split into SUB buckets, so any value is kept within 1/SUB of itself), constant
memory whatever the number of samples, exact min/max, and exact merging (bucket counts
add up), so results from several connections, processes or hosts combine without
averaging averages.

Values are integers in a unit the caller chooses (microseconds for latency).
"""

from __future__ import annotations

SUB_BITS = 6
SUB = 1 << SUB_BITS  # 64 sub-buckets per power of two: within ~1.6 %


def _index(value: int) -> int:
    if value < SUB:
        return value
    shift = value.bit_length() - SUB_BITS - 1
    return ((shift + 1) << SUB_BITS) + ((value >> shift) - SUB)


def _lowest(index: int) -> int:
    """The smallest value that falls into bucket `index`."""
    if index < SUB:
        return index
    shift = (index >> SUB_BITS) - 1
    return (SUB + (index & (SUB - 1))) << shift


class Histogram:
    __slots__ = ("counts", "total", "min", "max", "sum")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.min: int | None = None
        self.max: int | None = None
        self.sum = 0

    def record(self, value: int) -> None:
        value = int(value) if value > 0 else 0
        i = _index(value)
        counts = self.counts
        counts[i] = counts.get(i, 0) + 1
        self.total += 1
        self.sum += value
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value

    def record_many(self, values) -> None:
        """record() for each value (a batch: one bridge confirmation)."""
        from collections import Counter

        self.record_counts(Counter(values))

    def record_counts(self, tally) -> None:
        """record(value) `n` times for each value: n in `tally` (a mapping; the bridge's
        messages of one source read share their arrival time, so a confirmation holds a
        few distinct latencies)."""
        counts = self.counts
        get = counts.get
        lo = hi = None
        total = added = 0
        for v, n in tally.items():
            value = int(v) if v > 0 else 0
            i = _index(value)
            counts[i] = get(i, 0) + n
            total += n
            added += value * n
            if lo is None or value < lo:
                lo = value
            if hi is None or value > hi:
                hi = value
        if not total:
            return
        self.total += total
        self.sum += added
        if self.min is None or lo < self.min:
            self.min = lo
        if self.max is None or hi > self.max:
            self.max = hi

    def merge(self, other: "Histogram") -> "Histogram":
        for i, n in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + n
        self.total += other.total
        self.sum += other.sum
        if other.min is not None and (self.min is None or other.min < self.min):
            self.min = other.min
        if other.max is not None and (self.max is None or other.max > self.max):
            self.max = other.max
        return self

    def percentile(self, p: float) -> int | None:
        """The value at percentile `p` (0-100): the upper edge of the bucket holding it,
        never above the exact maximum."""
        if not self.total:
            return None
        if p >= 100:
            return self.max
        rank = max(1, int(-(-p * self.total // 100)))  # ceil(p% of total), at least 1
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                upper = _lowest(i + 1) - 1
                return min(max(upper, self.min or 0), self.max)
        return self.max

    def mean(self) -> float | None:
        return self.sum / self.total if self.total else None

    def to_json(self) -> dict:
        return {"sub_bits": SUB_BITS, "counts": {str(i): n for i, n in sorted(self.counts.items())},
                "total": self.total, "min": self.min, "max": self.max, "sum": self.sum}

    @classmethod
    def from_json(cls, data: dict) -> "Histogram":
        if data.get("sub_bits") != SUB_BITS:
            raise ValueError("histogram made with another precision")
        h = cls()
        h.counts = {int(i): int(n) for i, n in data.get("counts", {}).items()}
        h.total = int(data.get("total", sum(h.counts.values())))
        h.min, h.max, h.sum = data.get("min"), data.get("max"), int(data.get("sum", 0))
        return h
