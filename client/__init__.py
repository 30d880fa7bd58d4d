"""gRPC streaming client, server launcher and load tools for the multitalker Triton repository."""
