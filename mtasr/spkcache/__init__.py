"""Numpy port of NeMo Streaming Sortformer's arrival-order speaker cache.

`sync`: NeMo's synchronous ``streaming_update`` (``async_streaming=False``), the update NeMo's multitalker flow
(``SpeakerTaggedASR``) runs and this project serves. `asynchronous`: ``streaming_update_async``, the tutorial's
standalone diarizer (Step 1), proven in the parity suite. `common`: the parameters, the masking and concatenation
``forward_streaming_step`` wraps around the graph, the silence profile and the cache compression both share.
"""

from mtasr.spkcache.asynchronous import AsyncStreamingState, init_streaming_state_async, streaming_update_async
from mtasr.spkcache.common import SpeakerCacheParams, apply_mask_to_preds, concat_and_pad, torch_topk_indices
from mtasr.spkcache.sync import StreamingState, init_streaming_state, streaming_update

__all__ = [
    "AsyncStreamingState",
    "SpeakerCacheParams",
    "StreamingState",
    "apply_mask_to_preds",
    "concat_and_pad",
    "init_streaming_state",
    "init_streaming_state_async",
    "streaming_update",
    "streaming_update_async",
    "torch_topk_indices",
]
