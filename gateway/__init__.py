"""WebSocket gateway: one WebSocket connection = one Triton sequence, for browsers and any language.

`protocol` (the native protocol's schema), `upstream` (one Triton sequence over `tritonclient.grpc.aio`), `native`
and `realtime` (the native and the OpenAI-Realtime-compatible session handlers), `resample`, `server` (the
`websockets` server: routing, keys, origins, limits, TLS, the web page in `static/`), `process` (start/stop it as a
subprocess), `bench` (CPU per session-second). Run it with `python -m gateway`.
"""
