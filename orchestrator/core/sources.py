"""Where a model or data source lives: a local path, or a hub id (one rule, used by config, loaders and caches)."""

from __future__ import annotations

import os


def is_local_path(source: str) -> bool:
    """A data/model source is a local path (not a hub id) when it exists or looks like a file path.

    >>> is_local_path("openai/gsm8k"), is_local_path("../data/train.jsonl"), is_local_path("/models/qwen")
    (False, True, True)
    """
    return (
        source.startswith(("/", "./", "../", "~"))
        or source.endswith((".jsonl", ".json", ".parquet"))
        or os.path.exists(source)
    )
