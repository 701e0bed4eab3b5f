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
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")

#: Memory the pieces run side by side may hold together, whatever the cores (a piece's own size is its caller's
#: estimate): a large piece alone may exceed it, and then runs alone.
PIECES_BYTES = 2 * 2 ** 30

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


def in_piece() -> bool:
    """This thread runs a piece of :func:`each_on_one_thread` (its torch work must stay on one intra-op thread)."""
    return bool(getattr(_inside, "active", False))


def threads_within_memory(threads: int, piece_bytes: int) -> int:
    """How many of ``threads`` may run pieces of ``piece_bytes`` side by side within :data:`PIECES_BYTES` (one at
    least)."""
    return max(1, min(threads, PIECES_BYTES // max(1, piece_bytes)))


def each_on_one_thread(work: Callable[[T], Any], pieces: Sequence[T], threads: int) -> list[Any]:
    """``[work(p) for p in pieces]``, the pieces spread over at most ``threads`` Python threads, torch on one
    intra-op thread throughout; results in the pieces' order.

    The pieces must be independent (disjoint outputs); each runs under the caller's inference and grad modes.
    After a piece raises, no further piece starts, and the first error (in the pieces' order) is raised here once
    the pieces already running have finished; an interrupt of the caller waits for those too (nothing is left
    running behind the caller).  Called from inside a piece, or with one thread or one piece, it runs the pieces
    in this thread, in order.
    """
    with one_thread():
        if threads <= 1 or len(pieces) <= 1 or in_piece():
            return [work(piece) for piece in pieces]
        import torch

        modes = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())    # thread-local in torch
        results: list[Any] = [None] * len(pieces)
        errors: list[BaseException | None] = [None] * len(pieces)
        queue, lock, stop = iter(range(len(pieces))), threading.Lock(), threading.Event()

        def runner() -> None:
            while not stop.is_set():
                with lock:
                    k = next(queue, None)
                if k is None:
                    return
                try:
                    results[k] = work(pieces[k])
                except BaseException as exc:            # noqa: BLE001 - raised in the caller's thread below
                    errors[k] = exc
                    stop.set()

        workers = min(threads, len(pieces))
        runners = [_shared_pool(workers).submit(_marked, runner, modes) for _ in range(workers)]
        try:
            wait(runners)
        except BaseException:
            stop.set()
            wait(runners)
            raise
        for error in errors:
            if error is not None:
                raise error
        return results


def _marked(runner: Callable[[], None], modes: tuple[bool, bool]) -> None:
    """``runner()`` on a pool thread, under the caller's inference and grad modes (torch keeps them per thread)."""
    import torch

    _inside.active = True
    try:
        with torch.inference_mode(modes[0]), torch.set_grad_enabled(modes[1]):
            runner()
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
