"""JSON of the replies, the one encoder the serving path uses: orjson (about 5x json's speed on SegLST segments;
every reply of every session is encoded on the engine thread). Compact (no spaces after separators); the same
values as `json.dumps` once parsed."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """UTF-8 JSON of lists/dicts of str, int, float, bool and None."""
    return orjson.dumps(value)
