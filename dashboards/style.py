"""How strategies are drawn: one colour each and the order they appear in (tables, figures, summary.json).

The strategies themselves (orchestrator/core/strategies/) say what a run is; how it is shown is the dashboards'
alone. A strategy not listed here (a plugin, a test's) appears after the listed ones, alphabetically, in a
palette colour derived from its name; the SFT warm-start profile comes last.

>>> order_strategies({"random", "zeta", "uniform", "sft"})
['uniform', 'random', 'zeta', 'sft']
>>> strategy_color("uniform"), strategy_color("zeta") == strategy_color("zeta")
('#1f77b4', True)
"""

from __future__ import annotations

from collections.abc import Iterable

from plotly.colors import qualitative

from orchestrator.core.roles import BASE, REFERENCE, SFT

# (strategy, colour) in display order: the paper's Table 1, then the beyond-the-paper arms.
STYLES = (
    (BASE, "#7f7f7f"),
    (REFERENCE, "#1f77b4"),
    ("proportional", "#d62728"),
    ("proportional_r2", "#ff7f0e"),
    ("proportional_r3", "#8c564b"),
    ("random", "#2ca02c"),
    ("reduced", "#9467bd"),
    ("adalora", "#17becf"),
)
SFT_COLOR = "#ff7f0e"
_ORDER = {name: i for i, (name, _) in enumerate(STYLES)}
_COLORS = dict(STYLES)


def order_strategies(names: Iterable[str]) -> list[str]:
    """The listed strategies in display order, then the others alphabetically, the SFT profile last."""
    names = set(names)
    known = sorted((n for n in names if n in _ORDER), key=_ORDER.__getitem__)
    rest = sorted(names - set(known) - {SFT})
    return known + rest + ([SFT] if SFT in names else [])


def strategy_color(strategy: str) -> str:
    """A stable colour per strategy: its listed one, else a palette entry chosen by its name."""
    if strategy == SFT:
        return SFT_COLOR
    if strategy in _COLORS:
        return _COLORS[strategy]
    palette = qualitative.Dark24
    return palette[sum(map(ord, strategy)) % len(palette)]
