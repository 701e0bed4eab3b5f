"""Independent pieces of torch work spread over the compute's CPU threads, each piece on one intra-op thread.

Some work must run on one intra-op thread so that a chip's result is the same bits whatever chips it is computed
with and however many threads run: torch's vectorised elementwise ops round differently from their scalar
remainders, and where a thread's share begins moves that boundary (:func:`one_thread`).  That left all cores but
one idle where the work is large: a mesh mapper's fit of every block of every chip, a fleet's optical
propagations.  :func:`each_on_one_thread` gives the cores back without touching the bits: the work is cut where
it is independent anyway (whole batches of chips, whole setups), and each piece runs on a Python thread of a
small shared pool, its torch ops single-threaded (torch releases the GIL inside an op, so the pieces run at once).

Pieces that are short and follow torch's own multi-threaded ops gain nothing: after a parallel region torch's
OpenMP workers spin on the other cores for a while, and a piece run beside them shares its core (a fleet's mesh
passes between its matmuls were slower on two threads than on one).
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()
_inside = threading.local()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the duration (elementwise work whose bits must not depend on a split)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def each_on_one_thread(work: Callable[[T], Any], pieces: Sequence[T], threads: int) -> list[Any]:
    """``[work(p) for p in pieces]``, the pieces spread over up to ``threads`` Python threads, torch on one
    intra-op thread throughout; results in the pieces' order.

    The pieces must be independent (disjoint outputs); each runs under the caller's inference and grad modes.
    An exception in a piece is raised here once every piece
    has finished (none is left running behind the caller).  Called from inside a piece, or with one thread or one
    piece, it runs the pieces in this thread, in order.
    """
    with one_thread():
        if threads <= 1 or len(pieces) <= 1 or getattr(_inside, "active", False):
            return [work(piece) for piece in pieces]
        import torch

        modes = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())    # thread-local in torch
        pool = _shared_pool(min(threads, len(pieces)))
        futures = [pool.submit(_marked, work, piece, modes) for piece in pieces]
        errors = [f.exception() for f in futures]          # waits for all of them
        for error in errors:
            if error is not None:
                raise error
        return [f.result() for f in futures]


def _marked(work: Callable[[T], Any], piece: T, modes: tuple[bool, bool]) -> Any:
    """``work(piece)`` on a pool thread, under the caller's inference and grad modes (torch keeps them per thread)."""
    import torch

    _inside.active = True
    try:
        with torch.inference_mode(modes[0]), torch.set_grad_enabled(modes[1]):
            return work(piece)
    finally:
        _inside.active = False


def _shared_pool(size: int) -> ThreadPoolExecutor:
    """The process's pool, grown to ``size`` workers when it is smaller (its idle workers cost nothing)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < size:
            old = _pool
            _pool, _pool_size = ThreadPoolExecutor(size, thread_name_prefix="pnndeploy-piece"), size
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def _forget_pool_in_child() -> None:
    """A forked child has none of the parent's threads: it starts its own pool when it needs one."""
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)
