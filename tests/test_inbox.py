"""A worker's inbox: bounded, by pid, oldest first."""

from __future__ import annotations

from array import array

from workerfake import pages

from kmigratedd.inbox import Inbox


def test_inbox_overflow_drops_only_the_excess():
    inbox = Inbox(100)
    inbox.accept(5, array("Q", pages(80)), now=1.0)
    inbox.accept(6, array("Q", pages(50, 100)), now=2.0)
    assert inbox.pages == 100 and inbox.dropped == 30
    assert len(inbox.keys[5]) == 50 and len(inbox.keys[6]) == 50


def test_ready_for_a_full_batch_or_after_the_wait():
    inbox = Inbox(1000)
    assert not inbox.ready(16, 0.1, now=5.0)                   # empty
    inbox.accept(5, array("Q", pages(8)), now=1.0)
    assert not inbox.ready(16, 0.1, now=1.05)                  # 8 of 16, waited 50 ms
    assert inbox.ready(16, 0.1, now=1.1)                       # waited max_wait
    inbox.accept(6, array("Q", pages(8, 100)), now=1.06)
    assert inbox.ready(16, 10.0, now=1.06)                     # a full batch


def test_accept_each_groups_pairs_by_pid():
    inbox = Inbox(1000)
    a, b = pages(3), pages(2, 100)
    inbox.accept_each([(5, a[0]), (6, b[0]), (5, a[1]), (5, a[2]), (6, b[1])], now=2.0)
    assert inbox.pages == 5
    assert list(inbox.keys[5]) == a and list(inbox.keys[6]) == b
    assert inbox.since == {5: 2.0, 6: 2.0}
