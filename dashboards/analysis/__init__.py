"""The analysis the dashboards show: a study directory (the output contract) -> every statistic of the paper.

``analyze(DIR)`` / ``summarize(DIR)`` (:mod:`.summary`) read the contract files (:mod:`.load`), split the
runs into the study's cells, and compute per cell (:mod:`.cell`) the landscape and amplification
(:mod:`.profiles`), accuracy, McNemar and reward curves (:mod:`.training`) with the statistics of
:mod:`.stats`, and the findings in words (:mod:`.findings`). Pure: nothing is written; the report
(:mod:`dashboards.report`) writes summary.json and index.html from it.
"""

from dashboards.analysis.summary import Analysis, CellAnalysis, analyze, jsonable, summarize

__all__ = ["Analysis", "CellAnalysis", "analyze", "jsonable", "summarize"]
