"""The gRPC edge in front of several Triton replicas: nginx with session affinity, TLS, keys and limits."""
