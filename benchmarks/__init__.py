"""rankstudy benchmarks: each module measures one stage as a ratio of two timings taken in the same process.

``python -m benchmarks.bench_analysis``: analysis of a paper-scale synthetic study vs a bare Parquet scan.
"""
