"""Fault suite for the served stack: a real tritonserver, real gRPC clients, real faults (`make reliability`)."""
