"""Busy polling: wait for bytes by asking again at once, for a while, before sleeping until they come.

Why: in-situ training waits on the station about a millisecond per layer and pass, in sequence, and
on a virtual machine whose idle core halts (the VM exits to its host), the sleep and the wake, and the
cold caches after it, cost about as much as the wait itself (issue 26: work after a blocking wait ran
twice as slow as the same work in a loop).  The client polls for a reply (:class:`BusyPoll`, used by
:mod:`pnndeploy.backends.deadline`'s sockets), and gives up on a station slower than its budget, so a
slow station costs a few polls, not a core.
"""

from __future__ import annotations


class BusyPoll:
    """How long a wait for a reply polls before it sleeps, and when it stops trying.

    A reply whose first bytes come within ``seconds`` is taken without the thread sleeping and waking.  The cost is
    a core kept busy while it polls, so it gives up on a station slower than that: after :attr:`MISSES` polls in a
    row that found nothing it polls only every :attr:`PROBE_EVERY`-th wait, until one finds its reply again.
    ``seconds`` 0: never poll.  A wait is the first read after a request (:mod:`pnndeploy.backends.deadline`):
    the rest of a reply that takes several reads neither polls nor counts."""

    MISSES = 3
    PROBE_EVERY = 16

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = float(seconds)
        self.misses = 0
        self.reads = 0
        #: Waits that polled, and of them those that found their reply (reported, tested).
        self.polls = self.hits = 0

    def due(self) -> bool:
        """Whether this wait polls."""
        self.reads += 1
        return self.seconds > 0 and (self.misses < self.MISSES or self.reads % self.PROBE_EVERY == 0)

    def outcome(self, hit: bool) -> None:
        self.polls += 1
        self.hits += hit
        self.misses = 0 if hit else self.misses + 1
