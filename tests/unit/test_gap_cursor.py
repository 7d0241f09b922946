"""GapCursor: a cursor over a channel whose seqs grow with gaps (a NATS stream of all channels)."""

from __future__ import annotations

from fleetchat.backends.local_member import Cursor
from fleetchat.backends.nats_member import GapCursor


def _cursor(floor: int = 10) -> GapCursor:
    dirty: list[Cursor] = []
    return GapCursor("r1", "cell", floor, True, dirty)


def test_the_floor_moves_over_gaps_as_the_oldest_taken_is_settled() -> None:
    cur = _cursor()
    for seq in (14, 20, 31):  # the channel's messages; other channels took 11-13, 15-19, ...
        cur.take(seq, settled=False)
    cur.settle(20)  # out of order: recorded above the floor
    assert (cur.floor, sorted(cur.above)) == (10, [20])
    cur.settle(14)  # the oldest: the floor passes 14 and the already settled 20
    assert (cur.floor, sorted(cur.above)) == (20, [])
    cur.settle(31)
    assert (cur.floor, cur.above, cur.fetched) == (31, {}, 31)
    assert cur.is_settled(25)  # a seq of another channel under the floor: nothing to deliver


def test_a_message_settled_on_the_spot_moves_the_floor_only_when_nothing_is_open() -> None:
    cur = _cursor()
    cur.take(12, settled=True)  # the member's own message, nothing open: the floor follows
    assert cur.floor == 12
    cur.take(15, settled=False)
    cur.take(18, settled=True)  # behind an open one: kept above the floor
    assert (cur.floor, sorted(cur.above)) == (12, [18])
    cur.settle(15)
    assert (cur.floor, cur.above) == (18, {})


def test_skip_to_moves_the_floor_when_nothing_is_open_and_drops_what_it_passes() -> None:
    cur = _cursor()
    cur.above[40] = None  # settled before a restart, then trimmed from the stream
    cur.skip_to(50)
    assert (cur.fetched, cur.floor, cur.above) == (50, 50, {})
    cur.take(55, settled=False)
    cur.skip_to(60)  # 55 is still open: only fetched moves
    assert (cur.fetched, cur.floor) == (60, 50)
    cur.settle(55)
    assert cur.floor == 60  # nothing open: everything read is settled
    cur.skip_to(30)  # backwards: nothing happens
    assert (cur.fetched, cur.floor) == (60, 60)


def test_settling_twice_or_below_the_floor_changes_nothing() -> None:
    cur = _cursor()
    cur.take(11, settled=False)
    cur.take(12, settled=False)
    cur.settle(12)
    cur.settle(12)
    cur.settle(5)
    assert (cur.floor, sorted(cur.above), list(cur.taken)) == (10, [12], [11, 12])


def test_the_record_is_what_a_node_taking_over_needs() -> None:
    cur = _cursor()
    for seq in (11, 13, 17):
        cur.take(seq, settled=False)
    cur.settle(13)
    record = cur.record({"m-11": 2})
    assert (record.floor, record.above, record.retries) == (10, [13], {"m-11": 2})
    assert cur.dirty  # marked for the next save
