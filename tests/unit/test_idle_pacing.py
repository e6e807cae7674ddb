"""Idle pacing (``watcher.runtime.pacing.IdlePacer``) on a clock the test moves."""

from __future__ import annotations

from collections.abc import Callable

from watcher.runtime.pacing import IdlePacer
from watcher.settings import ChainSettings

WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_idle_poll_is_never_more_often_than_poll_seconds_and_a_failed_poll_sets_no_pace() -> None:
    """An idle_poll_seconds below poll_seconds paces as poll_seconds; a poll that did not
    complete leaves the chain due at the next run."""
    clock = Clock()
    pacer = IdlePacer(clock)
    chain = ChainSettings(
        name="c",
        chain_id=1,
        rpc_urls=("http://127.0.0.1:1",),
        receiving_address=WALLET,
        poll_seconds=10.0,
        idle_poll_seconds=1.0,
    )
    idle: Callable[[], bool] = lambda: False  # noqa: E731
    assert pacer.due(chain, idle)  # never polled
    pacer.polled(chain, pacer.began(), complete=True)
    clock.advance(4)
    assert not pacer.due(chain, idle)
    clock.advance(2)  # 6 s: within half a poll_seconds of the 10 s pace
    assert pacer.due(chain, idle)
    pacer.polled(chain, pacer.began(), complete=False)
    assert pacer.due(chain, idle)
    assert pacer.due(chain, lambda: True)
    assert pacer.skipped["c"] == 1
