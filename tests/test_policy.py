"""The policy pieces on their own: token bucket, headroom hysteresis, ping-pong damper,
retry once, adaptive threshold."""

from __future__ import annotations

import pytest

from kmigratedd.policy import HeadroomGuard, PingPongDamper, RetryOnce, TokenBucket


@pytest.mark.parametrize("rate,burst,events,expected", [
    (1000, 1000, [(0.0, 600), (0.0, 600), (0.5, 600), (10.0, 5000)], [600, 400, 500, 1000]),
    (0, 0, [(0.0, 10**9)], [10**9]),                      # 0 = unlimited
    (100, 50, [(0.0, 10), (0.0, 100), (0.2, 100)], [10, 40, 20]),
])
def test_token_bucket(rate, burst, events, expected):
    b = TokenBucket(rate, burst)
    assert [b.grant(want, t) for t, want in events] == expected


def test_token_bucket_wait_and_refund():
    b = TokenBucket(1000, 1000)
    assert b.grant(1000, 0.0) == 1000
    assert b.wait_for(500, 0.0) == pytest.approx(0.5)
    b.refund(300)
    assert b.grant(1000, 0.0) == 300


@pytest.mark.parametrize("frees,allowed", [
    ([1000, 500, 299, 350, 400, 399, 450, 500, 300], [1, 1, 0, 0, 0, 0, 0, 1, 1]),
    ([200, 600, 100], [0, 1, 0]),
])
def test_headroom_hysteresis(frees, allowed):
    g = HeadroomGuard(min_free_bytes=300, resume_free_bytes=500)
    assert [int(g.update(f)) for f in frees] == allowed


def test_headroom_allowance_never_crosses_the_floor():
    g = HeadroomGuard(300, 500)
    assert g.allowance(1000) == 700 and g.allowance(200) == 0 and g.allowance(400) == 0
    assert g.allowance(600) == 300
    # Promoting up to the floor (less than a page left above it) blocks too, until resume.
    assert g.allowance(303, unit=4) == 0 and g.blocked
    assert g.allowance(450, unit=4) == 0 and g.allowance(500, unit=4) == 200


def test_pingpong_damper():
    d = PingPongDamper(window_s=10, holdoff_s=100)
    d.record_promoted(7, [1, 2], now=0)
    assert d.filter(7, [1, 2, 3], now=5) == [3]          # 1 and 2 bounced back within 10 s
    assert d.pingpongs == 2
    assert d.filter(7, [1], now=50) == []                 # held off
    assert d.filter(7, [1], now=106) == [1]               # hold-off over
    d.record_promoted(7, [4], now=200)
    assert d.filter(7, [4], now=215) == [4]               # back after the window: no ping-pong
    d.record_promoted(8, [9], now=0)
    d.forget_pid(8)
    assert d.filter(8, [9], now=1) == [9]


def test_pingpong_damper_is_bounded():
    d = PingPongDamper(window_s=10, holdoff_s=100, max_entries=100)
    for i in range(10):
        d.record_promoted(1, range(i * 50, i * 50 + 50), now=0)
    assert d.size <= 100
    d.expire(now=11)
    assert d.size == 0 and not d.promoted


def test_pingpong_window_widens_while_promoted_pages_bounce():
    d = PingPongDamper(window_s=10, holdoff_s=100)
    d.adapt_window(promoted=1000, pingpongs=63, max_widen=16)    # under a batch's worth
    assert d.widen == 1
    d.adapt_window(promoted=1000, pingpongs=100, max_widen=16)   # 10%: not more
    assert d.widen == 1
    d.adapt_window(promoted=1000, pingpongs=101, max_widen=16)
    assert d.widen == 2 and d.window_now_s == 20
    d.adapt_window(promoted=0, pingpongs=500, max_widen=16)      # all held: still bouncing
    assert d.widen == 4
    for _ in range(5):
        d.adapt_window(promoted=10, pingpongs=500, max_widen=16)
    assert d.widen == 16
    # The widened window counts a page back after 150 s as a bounce, and holds it 1600 s.
    d.record_promoted(7, [1, 2], now=0)
    assert d.filter(7, [1], now=150) == [] and d.held[7][1] == 150 + 1600
    d.expire(now=150)
    assert 2 in d.promoted[7]                                    # kept for the wider window
    assert d.promoted_recently(7, [2], now=150) == {2}           # and not demoted within it
    d.record_demoted(7, [2], now=151)                            # unless by us: not a bounce
    assert 2 not in d.promoted[7] and d.filter(7, [2], now=152) == [] and d.pingpongs == 1
    d.adapt_window(promoted=100, pingpongs=1, max_widen=16)      # some bounce: no change
    assert d.widen == 16
    d.adapt_window(promoted=100, pingpongs=0, max_widen=16)      # none while promoting
    assert d.widen == 8
    d.adapt_window(promoted=0, pingpongs=0, max_widen=16)        # settled: kept
    assert d.widen == 8
    for _ in range(20):
        d.adapt_window(promoted=100, pingpongs=0, max_widen=16)
    assert d.widen == 1


def test_retry_once():
    r = RetryOnce(delay_s=1)
    assert r.failed(1, 10, now=0) is True
    assert r.due(0.5) == []
    assert r.due(1.0) == [(1, 10)]
    assert r.failed(1, 10, now=1.5) is False and r.dropped == 1   # second failure: dropped
    assert r.failed(1, 10, now=2) is True                         # a new episode


@pytest.mark.parametrize("hist,capacity,expected", [
    ({}, 0, 1),                                  # nothing seen: the floor
    ({0: 100, 3: 50}, 1000, 1),                  # everything fits: the floor
    ({0: 100, 3: 50}, 60, 8),                    # only the hottest bin (8..15) fits
    ({0: 100, 3: 50}, 0, 8),                     # nothing fits: the hottest bin still passes
    ({0: 100, 2: 30, 3: 50}, 90, 4),             # 50 + 30 <= 90: bin 2 (4..7) joins
    ({0: 100, 2: 30, 3: 50}, 79, 8),
])
def test_adaptive_threshold_table(hist, capacity, expected):
    from kmigratedd.policy import AdaptiveThreshold
    t = AdaptiveThreshold(floor=1)
    for b, n in hist.items():
        t.observe([1 << b] * n)
    assert t.update(capacity, 0.0) == expected


def test_adaptive_threshold_decays_back_to_the_floor():
    from kmigratedd.policy import AdaptiveThreshold
    t = AdaptiveThreshold(floor=2, half_life_s=5.0)
    t.observe([2] * 100 + [64] * 10)
    assert t.update(20, 0.0) == 64
    t.observe([64] * 10)
    assert t.update(1000, 1.0) == 2                # room again: back to the floor
    t.observe([2] * 100 + [64] * 10)
    assert t.update(20, 2.0) == 64
    assert t.update(20, 60.0) == 2                 # nothing new for a minute: decayed away
    assert t.raised_seconds == pytest.approx(1.0 + 58.0)
    off = AdaptiveThreshold(floor=3, enabled=False)
    off.observe([1000] * 10)
    assert off.update(0, 0.0) == 3
