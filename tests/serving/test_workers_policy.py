"""The choices of the worker supervisor (serving.http.workers) that need no process."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from serving.http.workers import (
    MAX_RESTART_DELAY_S,
    RESTART_DELAY_S,
    _Start,
    _Supervisor,
    may_stop,
    restart_delay,
    restart_order,
    retiree,
)


@dataclass
class FakeWorker:
    """What the choices read of a worker: started (up), answering its pings, stopping."""

    name: str
    is_serving: bool = True  # answers its pings
    stopped_at: float | None = None
    up: bool = True
    retiring: bool = False
    for_restart: bool = False

    def serving(self, _now: float) -> bool:
        return self.up and self.is_serving and self.stopped_at is None


def test_restart_pauses_double_from_half_a_second_and_stop_at_the_cap() -> None:
    delays = [restart_delay(n) for n in range(1, 9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert delays[0] == RESTART_DELAY_S


@pytest.mark.parametrize("failed_starts", [1_025, 10**6])
def test_a_place_failing_for_days_keeps_the_capped_pause(failed_starts: int) -> None:
    # 2.0 ** 1024 overflows a float: the parent must not crash after about 8.5 h of retries.
    assert restart_delay(failed_starts) == MAX_RESTART_DELAY_S


def test_sigttou_stops_a_worker_that_is_not_serving_before_a_serving_one() -> None:
    old, frozen, new = FakeWorker("old"), FakeWorker("frozen", is_serving=False), FakeWorker("new")
    assert retiree([old, frozen, new], 0.0) is frozen
    assert retiree([old, new], 0.0) is new  # all serve: the newest


def test_sigttou_never_stops_the_last_worker_serving_nor_one_already_stopping() -> None:
    stopping = FakeWorker("stopping", stopped_at=1.0)
    only = FakeWorker("only")
    assert retiree([stopping, only], 2.0) is None
    assert retiree([only], 2.0) is None


def test_sighup_replaces_workers_that_are_not_serving_first_then_by_age() -> None:
    a, b = FakeWorker("a"), FakeWorker("b", is_serving=False)
    c, d = FakeWorker("c"), FakeWorker("d", stopped_at=1.0)
    assert restart_order([a, b, c, d], 2.0) == [b, a, c]  # d is stopping already


def test_a_restart_stops_a_frozen_worker_only_while_another_serves() -> None:
    frozen, healthy = FakeWorker("frozen", is_serving=False), FakeWorker("healthy")
    assert may_stop(frozen, [healthy], 0.0)
    # A worker late with its ping (a GC pause, a busy host) while its only peer is still loading
    # its model: stopping it would leave nobody to answer.
    late, loading = FakeWorker("late", is_serving=False), FakeWorker("loading", up=False)
    assert not may_stop(late, [loading], 0.0)
    assert not may_stop(healthy, [loading], 0.0)


def test_a_restart_may_stop_a_worker_that_is_still_starting() -> None:
    assert may_stop(FakeWorker("starting", up=False), [], 0.0)


def _restart_blocked(workers: list[FakeWorker], starts: list[_Start]) -> bool:
    """`_Supervisor._restart_blocked` on these workers, with the first one next to replace."""
    supervisor = object.__new__(_Supervisor)  # no socket, no processes: only the choice
    supervisor.workers, supervisor.starts = workers, starts
    supervisor.restart_queue = [workers[0]]
    return supervisor._restart_blocked(0.0)


def test_a_restart_waits_for_its_own_successor_only() -> None:
    old, other = FakeWorker("old"), FakeWorker("other")
    assert not _restart_blocked([old, other], [])
    # A place waiting out a start-failure pause is not the restart's business...
    assert not _restart_blocked([old, other], [_Start(at=100.0, failed_starts=3)])
    # ...but the successor of the worker it stopped is, until it has started.
    assert _restart_blocked([old, other], [_Start(at=0.0, for_restart=True)])
    loading = FakeWorker("loading", up=False, for_restart=True)
    assert _restart_blocked([old, other, loading], [])
    loading.up = True
    assert not _restart_blocked([old, other, loading], [])


def test_a_restart_waits_while_the_worker_it_stopped_ends_but_not_for_a_retired_one() -> None:
    old, other = FakeWorker("old"), FakeWorker("other")
    assert _restart_blocked([old, other, FakeWorker("ending", stopped_at=1.0)], [])
    retired = FakeWorker("retired", stopped_at=1.0, retiring=True, up=False, for_restart=True)
    assert not _restart_blocked([old, other, retired], [])


def test_a_second_sighup_may_replace_a_successor_of_the_first_still_starting() -> None:
    # The first restart's successor hangs in its import (the code being replaced); the second
    # SIGHUP queues it as an old worker, so the restart does not wait for it to start.
    hanging = FakeWorker("hanging", up=False, for_restart=True)
    replaced = FakeWorker("replaced", for_restart=True)
    assert not _restart_blocked([hanging, replaced], [])
    # Not queued (it came after the SIGHUP): the restart waits for it.
    assert _restart_blocked([replaced, hanging], [])
