"""Pieces of torch work on the compute's threads (pnndeploy.threads): order, single-threaded pieces, the caller's
modes, errors after every piece, pieces inside pieces.  Platforms' uses (MZI mapping, diffractive fleets) are
checked bit for bit against one thread in their own tests and the conformance suite."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from pnndeploy.threads import each_on_one_thread, one_thread


def test_pieces_come_back_in_order_from_several_threads_each_single_threaded() -> None:
    seen: list[tuple[str, int]] = []

    def work(k: int) -> int:
        time.sleep(0.01 * (k % 3))                   # finish out of order
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return k * k

    before = torch.get_num_threads()
    assert each_on_one_thread(work, list(range(8)), threads=3) == [k * k for k in range(8)]
    assert torch.get_num_threads() == before
    assert {n for _, n in seen} == {1}
    names = {name for name, _ in seen}
    assert len(names) > 1 and all(name.startswith("pnndeploy-piece") for name in names)


def test_one_thread_or_one_piece_runs_here_in_order() -> None:
    here = threading.current_thread().name
    assert each_on_one_thread(lambda k: (threading.current_thread().name, k), [1, 2], threads=1) == [(here, 1),
                                                                                                   (here, 2)]
    assert each_on_one_thread(lambda k: threading.current_thread().name, [0], threads=4) == [here]


def test_pieces_run_under_the_callers_inference_and_grad_modes() -> None:
    def modes(_: int) -> tuple[bool, bool]:
        return torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    with torch.inference_mode():
        assert set(each_on_one_thread(modes, [0, 1, 2], threads=2)) == {(True, False)}
    with torch.no_grad():
        assert set(each_on_one_thread(modes, [0, 1, 2], threads=2)) == {(False, False)}
    assert set(each_on_one_thread(modes, [0, 1, 2], threads=2)) == {(False, True)}


def test_after_an_error_no_piece_starts_and_none_runs_behind_the_caller() -> None:
    started: list[int] = []
    finished: list[int] = []

    def work(k: int) -> None:
        started.append(k)
        if k == 1:
            raise ValueError("piece 1 failed")
        time.sleep(0.05)
        finished.append(k)

    with pytest.raises(ValueError, match="piece 1 failed"):
        each_on_one_thread(work, list(range(20)), threads=2)
    seen = (len(started), len(finished))
    time.sleep(0.2)
    assert (len(started), len(finished)) == seen                 # nothing still running
    assert len(started) < 20 and sorted(finished) == sorted(k for k in started if k != 1)


def test_an_interrupted_caller_waits_for_the_running_pieces_and_starts_no_more() -> None:
    started: list[int] = []
    finished: list[int] = []

    def work(k: int) -> None:
        started.append(k)
        time.sleep(0.1)
        finished.append(k)

    timer = threading.Timer(0.15, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            each_on_one_thread(work, list(range(20)), threads=2)
    finally:
        timer.cancel()
    assert sorted(finished) == sorted(started) and len(started) < 20
    time.sleep(0.25)
    assert len(started) == len(finished) < 20


def test_the_first_error_in_the_pieces_order_is_raised() -> None:
    def work(k: int) -> None:
        time.sleep(0.05 * (3 - k))
        raise ValueError(f"piece {k}")

    with pytest.raises(ValueError, match="piece 0"):
        each_on_one_thread(work, [0, 1], threads=2)


def test_no_more_pieces_run_at_once_than_asked_even_on_a_larger_pool() -> None:
    each_on_one_thread(lambda k: k, list(range(8)), threads=4)        # the shared pool grows to 4 workers
    running, most, lock = [0], [0], threading.Lock()

    def work(k: int) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1

    each_on_one_thread(work, list(range(8)), threads=2)
    assert most[0] == 2


def test_pieces_inside_a_piece_run_in_that_piece() -> None:
    def outer(k: int) -> list[str]:
        return each_on_one_thread(lambda j: threading.current_thread().name, [0, 1], threads=2)

    for names in each_on_one_thread(outer, [0, 1], threads=2):
        assert len(set(names)) == 1                  # no second level of pool work (it could wait on itself)


def test_one_thread_restores_the_count() -> None:
    before = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def _pieces_in_a_child(queue) -> None:
    queue.put(each_on_one_thread(lambda k: k + 1, [1, 2, 3], threads=2))


def test_a_forked_child_runs_pieces_on_a_pool_of_its_own() -> None:
    """The parent's pool threads do not exist in a forked child (Ray and multiprocessing fork): the child starts its
    own pool instead of waiting forever on the parent's."""
    import multiprocessing

    each_on_one_thread(lambda k: time.sleep(0.05), [0, 1], threads=2)   # the parent's pool: two idle workers
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_pieces_in_a_child, args=(queue,))
    child.start()
    child.join(timeout=30)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and child.exitcode == 0
    assert queue.get(timeout=5) == [2, 3, 4]


def test_pieces_side_by_side_stay_within_memory() -> None:
    """As many threads as PIECES_BYTES holds pieces of the given size, one at least (a huge piece runs alone)."""
    from pnndeploy.threads import PIECES_BYTES, threads_within_memory

    assert threads_within_memory(8, PIECES_BYTES // 3) == 3
    assert threads_within_memory(2, PIECES_BYTES // 3) == 2
    assert threads_within_memory(8, 2 * PIECES_BYTES) == 1
    assert threads_within_memory(1, 1) == 1
