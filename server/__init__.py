"""The gRPC front end: validate, encode, retrieve, filter, re-rank, stream."""
