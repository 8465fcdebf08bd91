"""Summaries over seeds, the test of a variant against the baseline, and the corrections across a table.

Kept apart from MLflow and from rendering so that the tests can check the numbers against scipy and
pandas directly, and the calibration test can feed it simulated prediction files.

The test (`bootstrap_test`) counts both sources of variance a table's difference has:
- seeds: the paired differences d_s = score(variant, seed s) - score(baseline, seed s) vary with training
  randomness; their sample variance / n is the seed part;
- the test set: every seed is scored on the same test dialogues, so the spread over seeds cannot show how
  much the difference would move on another draw of dialogues. A paired bootstrap over test dialogues
  (Efron & Tibshirani 1993; Koehn 2004 for paired bootstrap in NLP) resamples dialogues (an utterance's
  context makes the dialogue the unit), the same resample for both sides and every seed pair, recomputes
  the mean over seeds of d_s each time, and takes the variance of that mean: the test-set part.
Δ = mean of d_s (the same paired seeds as the test); SE = sqrt(seed part + test-set part); the statistic
Δ / SE is referred to a t distribution with Welch-Satterthwaite degrees of freedom (n - 1 for the seed
part, dialogues - 1 for the test-set part), which gives the p-value and the CI. Holm's step-down
correction (Holm 1979) then runs across the rows of a table. A planted null is shown equivalent by two
one-sided tests (TOST, Schuirmann 1987) against a stated margin.

Without per-utterance predictions (sweeps recorded before predictions.csv existed) the test falls back
to a paired t-test over seeds, which ignores test-set sampling: the table says which test each row got.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

TEST_NAME = "paired bootstrap + seeds"
TTEST_NAME = "paired t-test"
MIN_PAIRS = 3           # below this a seed-level variance says nothing worth printing
REPLICATES = 1000       # bootstrap resamples of the test dialogues
BOOTSTRAP_SEED = 0      # fixed: a regenerated report prints the same numbers
LEVEL = 0.95            # confidence level of the printed CI


@dataclass(frozen=True)
class Summary:
    mean: float          # nan when n == 0
    std: float           # sample standard deviation (ddof=1); nan when n < 2
    n: int


@dataclass(frozen=True)
class PairedTest:
    name: str            # TEST_NAME, TTEST_NAME, or "" when no test was made
    n: int               # number of seed pairs
    statistic: float     # t (nan when no test)
    p: float             # two-sided p (nan when no test)
    note: str            # why no test was made, empty otherwise
    seeds: tuple[str, ...] = ()
    delta: float = math.nan      # mean paired difference over `seeds`
    se: float = math.nan         # its standard error (both variance parts)
    df: float = math.nan         # Welch-Satterthwaite degrees of freedom
    ci: tuple[float, float] = (math.nan, math.nan)   # LEVEL confidence interval for delta
    p_adjusted: float = math.nan  # Holm-corrected across the table's rows (set by the table)

    @property
    def made(self) -> bool:
        return not self.note

    def text(self) -> str:
        if not self.made:
            return self.note
        holm = "" if math.isnan(self.p_adjusted) else f", Holm p={format_p(self.p_adjusted)}"
        return f"p={format_p(self.p)}{holm}, n={self.n}"


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
    """Two-sided paired t-test (scipy.stats.ttest_rel) over the seeds both sides have, in seed order: the
    fallback when the trials left no predictions (it ignores test-set sampling)."""
    from scipy import stats  # scipy only when a test is run: seconds to import

    seeds = tuple(s for s in variant if s in baseline)
    n = len(seeds)
    diffs = [variant[s] - baseline[s] for s in seeds]
    delta = math.fsum(diffs) / n if n else math.nan
    if n < MIN_PAIRS:
        return PairedTest("", n, math.nan, math.nan, f"no test (n<{MIN_PAIRS})", seeds, delta)
    if max(diffs) - min(diffs) == 0.0:
        # Every pair differs by the same amount: t is undefined (zero variance); scipy would give nan.
        return PairedTest("", n, math.nan, math.nan, f"no test (identical differences, n={n})", seeds, delta)
    result = stats.ttest_rel([variant[s] for s in seeds], [baseline[s] for s in seeds])
    se = summarize(diffs).std / math.sqrt(n)
    return _with_interval(PairedTest(TTEST_NAME, n, float(result.statistic), float(result.pvalue), "", seeds,
                                     delta, se, float(n - 1)))


# ---- the bootstrap test on per-utterance predictions ---------------------------------------------------

@dataclass(frozen=True)
class Predictions:
    """One trial's predictions on one split, as label indices, with the dialogue of every utterance."""
    utterance_ids: tuple[str, ...]
    dialogue: np.ndarray     # (N,) int, dialogue index 0..D-1
    gold: np.ndarray         # (N,) int
    predicted: np.ndarray    # (N,) int

    @classmethod
    def from_rows(cls, dialogue_ids, utterance_ids, gold, predicted, labels: list[str]) -> "Predictions":
        index = {lbl: i for i, lbl in enumerate(labels)}
        dialogues: dict[str, int] = {}
        dialogue = [dialogues.setdefault(d, len(dialogues)) for d in dialogue_ids]
        try:
            g = [index[x] if isinstance(x, str) else int(x) for x in gold]
            p = [index[x] if isinstance(x, str) else int(x) for x in predicted]
        except KeyError as err:
            raise ValueError(f"predictions name label {err} that is not one of {labels}") from None
        return cls(tuple(utterance_ids), np.asarray(dialogue, dtype=np.int64), np.asarray(g, dtype=np.int64),
                   np.asarray(p, dtype=np.int64))


def scores_from_confusion(confusion: np.ndarray, metric: str, labels: list[str]) -> np.ndarray:
    """wf1 | acc | mf1 | f1_<label> from confusion matrices (..., K, K) (rows = gold), as model/metrics.py
    computes them: weighted F1 by support, macro F1 over the classes that occur or are predicted."""
    support = confusion.sum(axis=-1)
    predicted = confusion.sum(axis=-2)
    hits = np.diagonal(confusion, axis1=-2, axis2=-1)
    denom = support + predicted
    f1 = np.divide(2.0 * hits, denom, out=np.zeros_like(denom, dtype=float), where=denom > 0)
    total = support.sum(axis=-1)
    if metric == "acc":
        return hits.sum(axis=-1) / total
    if metric == "wf1":
        return (f1 * support).sum(axis=-1) / total
    if metric == "mf1":
        seen = denom > 0
        return (f1 * seen).sum(axis=-1) / np.maximum(seen.sum(axis=-1), 1)
    if metric.startswith("f1_") and metric[3:] in labels:
        return f1[..., labels.index(metric[3:])]
    raise ValueError(f"unknown metric {metric!r} (wf1, acc, mf1 or f1_<label>)")


def _confusions(pred: Predictions, weights: np.ndarray, k: int) -> np.ndarray:
    """(B, K, K) confusion matrices with utterance weights (B, N): one per bootstrap resample."""
    onehot = np.zeros((len(pred.gold), k * k))
    onehot[np.arange(len(pred.gold)), pred.gold * k + pred.predicted] = 1.0
    return (weights @ onehot).reshape(-1, k, k)


def dialogue_resamples(n_dialogues: int, replicates: int = REPLICATES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(replicates, D) counts: how often each dialogue is drawn in each resample (D draws with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_dialogues, np.full(n_dialogues, 1.0 / n_dialogues), size=replicates).astype(float)


def bootstrap_test(variant: dict[str, Predictions], baseline: dict[str, Predictions], metric: str,
                   labels: list[str], replicates: int = REPLICATES, seed: int = BOOTSTRAP_SEED) -> PairedTest:
    """The variant against the baseline on `metric`, over the seeds both have (see the module docstring).

    Every prediction set must cover the same utterances in the same order (one test set); ValueError if not."""
    from scipy import stats

    seeds = tuple(s for s in variant if s in baseline)
    n = len(seeds)
    if n == 0:
        return PairedTest("", 0, math.nan, math.nan, f"no test (n<{MIN_PAIRS})", seeds)
    sets = [variant[s] for s in seeds] + [baseline[s] for s in seeds]
    reference = sets[0]
    for other in sets[1:]:
        if other.utterance_ids != reference.utterance_ids:
            raise ValueError("predictions of the compared trials cover different utterances (not one test set)")
    k = len(labels)
    whole = np.ones((1, len(reference.gold)))
    full = [scores_from_confusion(_confusions(p, whole, k), metric, labels)[0] for p in sets]
    diffs = [full[i] - full[n + i] for i in range(n)]
    delta = float(np.mean(diffs))
    if n < MIN_PAIRS:
        return PairedTest("", n, math.nan, math.nan, f"no test (n<{MIN_PAIRS})", seeds, delta)
    counts = dialogue_resamples(int(reference.dialogue.max()) + 1, replicates, seed)
    weights = counts[:, reference.dialogue]                       # (B, N): an utterance counts as its dialogue
    boot = [scores_from_confusion(_confusions(p, weights, k), metric, labels) for p in sets]
    boot_delta = np.mean([boot[i] - boot[n + i] for i in range(n)], axis=0)   # (B,) mean over seed pairs
    seed_part = float(np.var(diffs, ddof=1)) / n
    test_part = float(np.var(boot_delta, ddof=1))
    variance = seed_part + test_part
    if variance <= 0.0:
        return PairedTest("", n, math.nan, math.nan, f"no test (identical predictions, n={n})", seeds, delta)
    dialogues = int(counts.shape[1])
    df = variance ** 2 / (seed_part ** 2 / (n - 1) + test_part ** 2 / max(dialogues - 1, 1))
    se = math.sqrt(variance)
    t = delta / se
    p = float(2.0 * stats.t.sf(abs(t), df))
    return _with_interval(PairedTest(TEST_NAME, n, t, p, "", seeds, delta, se, float(df)))


def _with_interval(test: PairedTest, level: float = LEVEL) -> PairedTest:
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2.0, test.df)) * test.se
    return replace(test, ci=(test.delta - half, test.delta + half))


# ---- across a table ------------------------------------------------------------------------------------

def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given; nan stays nan and is not counted)."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m = len(order)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def equivalence_p(delta: float, se: float, df: float, margin: float) -> float:
    """Two one-sided tests (TOST) of |true difference| < margin: the larger one-sided p. Below alpha means the
    (1 - 2 alpha) CI lies inside (-margin, +margin): the difference is shown to be smaller than the margin."""
    from scipy import stats

    if math.isnan(se) or se <= 0:
        return math.nan
    lower = float(stats.t.sf((delta + margin) / se, df))    # H0: difference <= -margin
    upper = float(stats.t.cdf((delta - margin) / se, df))   # H0: difference >= +margin
    return max(lower, upper)


def format_p(p: float) -> str:
    if math.isnan(p):
        return "nan"
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.3g}" if p < 0.01 else f"{p:.3f}"


def pct(value: float) -> str:
    """A [0, 1] score as a percentage with 2 decimals (the ERC convention)."""
    return f"{100.0 * value:.2f}"
