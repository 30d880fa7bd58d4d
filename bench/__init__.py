"""Measurement scripts (print figures, not timed tests): load generator, encoder batching, memory per session."""
