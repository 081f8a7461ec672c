"""The analysis the dashboards show: a study directory (the output contract) -> every statistic of the paper.

``analyze(DIR)`` / ``summarize(DIR)`` (:mod:`.summary`) read the contract files (:mod:`.load`), split the
runs into the study's cells, and compute per cell (:mod:`.cell`) the landscape and amplification
(:mod:`.profiles`), accuracy, McNemar and reward curves (:mod:`.training`, :mod:`.items`) with the statistics
of :mod:`.stats`, the beyond-the-paper parts (:mod:`.beyond`) and the findings in words (:mod:`.findings`),
all as the typed summary of :mod:`.schema`. Pure: nothing is written; the report (:mod:`dashboards.report`)
writes summary.json and index.html from it.
"""

from dashboards.analysis.summary import Analysis, CellAnalysis, analyze, summarize

__all__ = ["Analysis", "CellAnalysis", "analyze", "summarize"]
