"""rankstudy's pure core: what a study is, with no model, no Ray and no worker.

Errors, typed YAML, the config sections, the output contract (tables, run.json, study.yaml), study axes, the
plan's types, the strategies as pure definitions, allocation (Eq. 3), importance (Eq. 2), GPU packing and LoRA
scaling. It imports nothing of rankstudy outside itself (tests/test_layers.py checks every import), so the
workers, the dashboards and the driver can all stand on it.
"""
