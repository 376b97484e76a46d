"""Encoder replicas, dynamic batching and the vector index (no server imports)."""
