"""How numbers are written in the findings and the report: one set of formatters, one marker per place.

A missing number (None: undefined, not measured) is ``n/a`` in a sentence and ``–`` in a table cell; each
formatter takes ``missing`` so the caller says which it writes.

>>> percent(0.7451), percent(None), percent(0.7451, sign="", missing=DASH), percent(0.05, digits=0)
('74.5%', 'n/a', '74.5', '5%')
>>> number(2.1734), number(2.1734, unit="x"), number(None, unit="x"), number(0.9621, ".3f")
('2.17', '2.17x', 'n/a', '0.962')
>>> p_value(0.0304), p_value(5.4e-07), p_value(None, missing=DASH)
('0.030', '5.4e-07', '–')
>>> params(36929536), params(None), params(5120), params(0)
('36.9M', '–', '5.1k', '0')
"""

from __future__ import annotations

MISSING = "n/a"  # in sentences
DASH = "–"  # in table cells


def percent(x: float | None, digits: int = 1, *, sign: str = "%", missing: str = MISSING) -> str:
    """A share as a percentage, ``digits`` after the point."""
    return missing if x is None else f"{100 * x:.{digits}f}{sign}"


def number(x: float | None, fmt: str = ".2f", *, unit: str = "", missing: str = MISSING) -> str:
    """A number in ``fmt`` with its unit."""
    return missing if x is None else format(x, fmt) + unit


def p_value(p: float | None, *, missing: str = MISSING) -> str:
    """A p-value readably: three decimals, or scientific notation below 0.001."""
    if p is None:
        return missing
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def params(n: int | None, *, missing: str = DASH) -> str:
    """Trainable parameters as the paper prints them."""
    if n is None:
        return missing
    if n == 0:
        return "0"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"
