"""Timeout messages of the transports' waits (pure logic; the real transports' timeouts are covered by
the multi-process error and stress tests): they state the limit, not the float left of a deadline."""
import pytest

from multiwrite.errors import MultiwriteTimeout
from multiwrite.transport.base import seconds, wait_polling


@pytest.mark.parametrize("left, shown", [(5.99949, "6"), (6.0, "6"), (300.0, "300"), (2.96, "3"),
                                         (0.5, "0.5"), (0.001, "0.001")])
def test_seconds_rounds_to_a_tenth(left, shown):
    assert seconds(left) == shown


class _NeverDone:
    description = "receive of 64 B from rank 3"

    def test(self):
        return False


def test_wait_polling_times_out_with_a_clear_message():
    with pytest.raises(MultiwriteTimeout) as info:
        wait_polling(_NeverDone(), 0.2999, "all_gather (call #7)")
    assert str(info.value).startswith("all_gather (call #7): timed out after 0.3s waiting for receive of 64 B "
                                      "from rank 3")
