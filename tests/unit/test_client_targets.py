"""The SDK's target handling: one address as is, several front ends balanced round robin."""

from __future__ import annotations

import pytest

from bertrec.client._build import channel_target

ROUND_ROBIN = [("grpc.lb_policy_name", "round_robin")]


def test_one_address_is_passed_through():
    assert channel_target("127.0.0.1:50051") == ("127.0.0.1:50051", [])
    assert channel_target(["localhost:50051"]) == ("localhost:50051", [])


def test_several_front_ends_become_one_balanced_channel():
    assert channel_target(["127.0.0.1:1", "10.0.0.2:2"]) == ("ipv4:127.0.0.1:1,10.0.0.2:2", ROUND_ROBIN)
    assert channel_target(("[::1]:1", "[::1]:2")) == ("ipv6:[::1]:1,[::1]:2", ROUND_ROBIN)
    assert channel_target("dns:///bertrec.internal:50051") == ("dns:///bertrec.internal:50051", ROUND_ROBIN)


@pytest.mark.parametrize(
    "targets, message",
    [
        ([], "no server"),
        (["host-a:1", "host-b:2"], "dns:///"),
        (["127.0.0.1:1", "127.0.0.1"], "no port"),
        (["127.0.0.1:1", "[::1]:2"], "all be IPv4"),
    ],
)
def test_unusable_target_lists_are_refused(targets, message):
    with pytest.raises(ValueError, match=message):
        channel_target(targets)
