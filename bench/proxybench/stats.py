"""Medians and spreads over the rounds. results[setup][case] is a list of sample dicts, one
per round in which that case ran."""

import statistics


def values(results, setup, case, key):
    return [s[key] for s in results.get(setup, {}).get(case, []) if s.get(key) is not None]


def median(results, setup, case, key):
    v = values(results, setup, case, key)
    return statistics.median(v) if v else None


def spread(results, setup, case, key):
    """(min, max) over the rounds, or None."""
    v = values(results, setup, case, key)
    return (min(v), max(v)) if v else None


def worst(results, setup, case, key):
    v = values(results, setup, case, key)
    return max(v) if v else None


def ratio(results, a, b, case, key):
    """median(a) / median(b), or None when either is missing."""
    x, y = median(results, a, case, key), median(results, b, case, key)
    if x is None or not y:
        return None
    return x / y


def cell(results, setup, case, key, fmt, scale=1.0):
    """'median (min–max)' or 'n/a'; the spread is left out after a single round."""
    m = median(results, setup, case, key)
    if m is None:
        return "n/a"
    lo, hi = spread(results, setup, case, key)
    text = fmt(m * scale)
    if len(values(results, setup, case, key)) > 1:
        text += f" ({fmt(lo * scale)}–{fmt(hi * scale)})"
    return text
