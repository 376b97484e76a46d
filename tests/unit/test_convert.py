"""Protobuf conversions that take a faster road than the generated constructors must build the
same messages."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertrec import convert
from bertrec.v1 import recommender_pb2 as pb


def slow_encode_response(vectors: np.ndarray, dim: int) -> pb.EncodeResponse:
    return pb.EncodeResponse(vectors=[pb.Vector(values=v.tolist()) for v in vectors], dim=dim)


@pytest.mark.parametrize("shape", [(0, 384), (1, 384), (5, 384), (3, 1), (2, 32), (2, 1024), (1, 40000)])
def test_encode_response_matches_the_generated_constructor(shape):
    vectors = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    fast = convert.encode_response_to_pb(vectors, shape[1])
    assert fast == slow_encode_response(vectors, shape[1])
    assert fast.SerializeToString() == slow_encode_response(vectors, shape[1]).SerializeToString()


def test_encode_response_converts_other_float_types_to_float32():
    vectors = np.array([[0.1, -2.5, 1e-30]], dtype=np.float64)
    response = convert.encode_response_to_pb(vectors, 3)
    assert list(response.vectors[0].values) == pytest.approx(vectors[0].astype(np.float32).tolist())


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 1 << 28))
def test_varint_is_protobufs(n):
    from google.protobuf.internal.encoder import _VarintBytes

    assert convert._varint(n) == _VarintBytes(n)


def test_encode_response_refuses_a_flat_array():
    with pytest.raises(ValueError, match="n, dim"):
        convert.encode_response_to_pb(np.zeros(384, np.float32), 384)
