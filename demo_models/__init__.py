"""Small trained demo models (Streaming Sortformer + multitalker Parakeet) on synthetic espeak-ng speech."""
