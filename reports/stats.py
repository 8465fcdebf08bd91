"""Summaries over seeds and the paired test against the baseline.

Kept apart from MLflow and from rendering so that the tests can check the numbers against scipy and
pandas directly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

TEST_NAME = "paired t-test"
MIN_PAIRS = 3  # below this a t-test on seed pairs says nothing worth printing


@dataclass(frozen=True)
class Summary:
    mean: float          # nan when n == 0
    std: float           # sample standard deviation (ddof=1); nan when n < 2
    n: int


@dataclass(frozen=True)
class PairedTest:
    name: str            # "paired t-test" or "" when no test was made
    n: int               # number of seed pairs
    statistic: float     # t (nan when no test)
    p: float             # two-sided p (nan when no test)
    note: str            # why no test was made, empty otherwise
    seeds: tuple[str, ...] = ()

    @property
    def made(self) -> bool:
        return not self.note

    def text(self) -> str:
        if not self.made:
            return self.note
        return f"p={format_p(self.p)}, n={self.n}"


def summarize(values: list[float]) -> Summary:
    n = len(values)
    if n == 0:
        return Summary(math.nan, math.nan, 0)
    mean = math.fsum(values) / n
    if n < 2:
        return Summary(mean, math.nan, 1)
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return Summary(mean, math.sqrt(var), n)


def paired_test(variant: dict[str, float], baseline: dict[str, float]) -> PairedTest:
    """Two-sided paired t-test (scipy.stats.ttest_rel) over the seeds both sides have, in seed order."""
    from scipy import stats  # scipy only when a test is run: seconds to import

    seeds = tuple(s for s in variant if s in baseline)
    n = len(seeds)
    if n < MIN_PAIRS:
        return PairedTest("", n, math.nan, math.nan, f"no test (n<{MIN_PAIRS})", seeds)
    a = [variant[s] for s in seeds]
    b = [baseline[s] for s in seeds]
    diffs = [x - y for x, y in zip(a, b)]
    if max(diffs) - min(diffs) == 0.0:
        # Every pair differs by the same amount: t is undefined (zero variance); scipy would give nan.
        return PairedTest("", n, math.nan, math.nan, f"no test (identical differences, n={n})", seeds)
    result = stats.ttest_rel(a, b)
    return PairedTest(TEST_NAME, n, float(result.statistic), float(result.pvalue), "", seeds)


def format_p(p: float) -> str:
    if math.isnan(p):
        return "nan"
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.3g}" if p < 0.01 else f"{p:.3f}"


def pct(value: float) -> str:
    """A [0, 1] score as a percentage with 2 decimals (the ERC convention)."""
    return f"{100.0 * value:.2f}"
