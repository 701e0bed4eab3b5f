"""Where independent pieces of work run: in this process, in order (the default), or as Ray tasks.

Ray (an optional extra, ``pip install -e '.[ray]'``) is used as it is: a local
cluster of this machine starts itself when no address is given (``ray.init``
with ``num_cpus`` set, so a two-core machine is not oversubscribed), or an
existing one is joined (``--address auto`` or ``ray://HOST:PORT``).  Each task
asks for one CPU.  Results come back in submission order; a task that raises
is returned as its error, so one failure does not lose the others; Ctrl-C
cancels what has not finished and shuts the local cluster down.

Tasks receive and return plain data (paths, settings, numpy arrays, dicts of
numbers, profiles and deployments, and for a generated lot the function that
makes its chips).  Ray serialises them between our own processes; no user file
is ever unpickled.  Mapping a fleet on Ray runs on the workers
(:func:`map_fleet`, :func:`lot_accuracy`), not in the driver.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from pnndeploy.errors import PnnError

EXECUTORS = ("local", "ray")
#: Chips per Ray task when a fleet is evaluated on Ray.
CHIPS_PER_TASK = 512


class ExecutorError(PnnError):
    """The executor cannot run (Ray missing, no cluster at the address)."""


@dataclass
class TaskFailure:
    """A task that raised: its error, as one line."""

    error: str


def require_ray() -> Any:
    """The ray module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ExecutorError("--executor ray needs Ray, an optional extra: pip install -e '.[ray]' "
                            "(or pip install 'ray>=2.9'); without it use --executor local") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray, initialised for the duration: a local cluster of ``num_cpus`` (default: this machine's cores) when
    ``address`` is None, else the cluster at ``address``.  A session already open is reused and left open."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        kwargs["address"] = address
    else:
        # "local": a new cluster of this machine even when RAY_ADDRESS or a `ray start` cluster exists
        kwargs["address"] = "local"
        kwargs["num_cpus"] = num_cpus or len(os.sched_getaffinity(0)) or 1
    handler = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address}" if address else "on this machine"
        raise ExecutorError(f"cannot start or reach a Ray cluster {where} ({str(exc).splitlines()[0][:300]}); "
                            "check --address (auto, or ray://HOST:PORT with pip install 'ray[client]'), or drop it "
                            "to start a local cluster") from None
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)     # ray.init installs its own; keep the command's (exit 143)
    try:
        yield ray
    finally:
        ray.shutdown()


def run_tasks(fn: Callable[..., Any], args: Sequence[tuple], executor: str = "local", address: str | None = None,
              num_cpus: int | None = None, on_result: Callable[[int, Any], None] | None = None,
              gpus_per_task: int = 0) -> list[Any]:
    """``[fn(*a) for a in args]`` on the chosen executor; a raising call gives a :class:`TaskFailure`.

    On Ray each task asks for one CPU and ``gpus_per_task`` GPUs (Ray then shows the task only its own GPU).

    ``on_result(index, result)`` is called as each result arrives (in order locally, as they finish on Ray),
    so a caller can write each result at once and lose nothing to a later interruption.
    """
    if executor not in EXECUTORS:
        raise ExecutorError(f"--executor {executor!r} is unknown; use one of {', '.join(EXECUTORS)}")
    results: list[Any] = [None] * len(args)
    if executor == "local":
        for i, a in enumerate(args):
            results[i] = _guarded(fn, a)
            if on_result is not None:
                on_result(i, results[i])
        return results
    with ray_session(address, num_cpus) as ray:
        remote = ray.remote(num_cpus=1, num_gpus=gpus_per_task, max_retries=0)(_guarded)
        pending = {remote.remote(fn, a): i for i, a in enumerate(args)}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    i = pending.pop(ref)
                    try:
                        results[i] = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - a worker that died, a task Ray could not run
                        results[i] = TaskFailure(_one_line(exc))
                    if on_result is not None:
                        on_result(i, results[i])
        except BaseException:               # Ctrl-C, or a result that could not be recorded: stop the rest
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    return results


def _guarded(fn: Callable[..., Any], a: tuple) -> Any:
    """Run one task; its error comes back as a value, not a lost task."""
    try:
        return fn(*a)
    except Exception as exc:  # noqa: BLE001 - every failure of one task is reported, the others go on
        return TaskFailure(_one_line(exc))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# ------------------------------------------------------------------------------- fleets on Ray
def _chip_batch_accuracy(model: Any, profiles: list[Any], deployments: list[Any], X: np.ndarray, y: np.ndarray,
                         conditions: Any, device: str = "cpu") -> np.ndarray:
    """Accuracy of one batch of chips (what one Ray task computes): on the CPU it was given, one thread, or on the
    GPU Ray gave it (``device`` "cuda": the task sees only its own)."""
    from pnndeploy.compute import Compute
    from pnndeploy.simulation.fleet import SimulatedFleet

    return SimulatedFleet(model, profiles, deployments, Compute(device, 1)).accuracy(X, y, conditions)


def fleet_accuracy(prepared: Any, conditions: Any, executor: str = "local", address: str | None = None,
                   chips_per_task: int = CHIPS_PER_TASK, num_cpus: int | None = None) -> np.ndarray:
    """Accuracy of every simulated chip of ``prepared`` (in its order) under ``conditions``; on Ray, in batches.

    A chip's outputs do not depend on the chips evaluated with it (the simulator's design), so the
    result is the local one bit for bit whatever the batching.
    """
    if executor not in EXECUTORS:
        raise ExecutorError(f"--executor {executor!r} is unknown; use one of {', '.join(EXECUTORS)}")
    fleet = prepared.fleet          # the simulated chips (real ones are mapped, not evaluated)
    if fleet is None:
        raise ExecutorError("no simulated chip to evaluate: every chip given is real")
    if executor == "local":
        return fleet.accuracy(prepared.data.X, prepared.data.y, conditions)
    if chips_per_task < 1:
        raise ExecutorError(f"--chips-per-task must be at least 1 (got {chips_per_task})")
    # exactly the chips of prepared.fleet, in its order (a simulated profile naming a backend is measured there)
    pairs = [(p, d) for p, d in zip(prepared.profiles, prepared.deployments) if p.simulated and p.backend is None]
    with ray_session(address, num_cpus) as ray:
        model = ray.put(prepared.model)
        X, y = ray.put(prepared.data.X), ray.put(prepared.data.y)
        cuda = fleet.compute.is_cuda
        args = [(model, [p for p, _ in pairs[i:i + chips_per_task]], [d for _, d in pairs[i:i + chips_per_task]],
                 X, y, conditions, "cuda:0" if cuda else "cpu") for i in range(0, len(pairs), chips_per_task)]
        parts = run_tasks(_resolve_then(_chip_batch_accuracy), args, "ray", address, num_cpus,
                          gpus_per_task=int(cuda))
    _raise_failures(parts, "Ray tasks")
    return np.concatenate(parts)


def _raise_failures(parts: Sequence[Any], what: str) -> None:
    """One ExecutorError naming how many of ``parts`` failed and the first failure, when any did."""
    failed = [p for p in parts if isinstance(p, TaskFailure)]
    if failed:
        raise ExecutorError(f"{len(failed)} of {len(parts)} {what} failed; first: {failed[0].error}")


def map_fleet(model: Any, profiles: Sequence[Any], executor: str = "local", address: str | None = None,
              chips_per_task: int = CHIPS_PER_TASK, num_cpus: int | None = None) -> list[Any]:
    """Every chip's deployment (:func:`~pnndeploy.deploy.mapping.map_models`), in order; on Ray in tasks of
    ``chips_per_task`` chips mapped on the workers (a chip's mapping does not depend on the chips beside it)."""
    from pnndeploy.deploy.mapping import check_compatible, map_models

    if executor not in EXECUTORS:
        raise ExecutorError(f"--executor {executor!r} is unknown; use one of {', '.join(EXECUTORS)}")
    if executor == "local" or len(profiles) <= 1:
        return map_models(model, profiles)
    if chips_per_task < 1:
        raise ExecutorError(f"--chips-per-task must be at least 1 (got {chips_per_task})")
    for profile in profiles:                   # a chip of another platform is refused here, not in a task
        check_compatible(model, profile)
    with ray_session(address, num_cpus) as ray:
        ref = ray.put(model)
        args = [(ref, list(profiles[i:i + chips_per_task])) for i in range(0, len(profiles), chips_per_task)]
        parts = run_tasks(_resolve_then(map_models), args, "ray", address, num_cpus)
    _raise_failures(parts, "Ray mapping tasks")
    return [d for part in parts for d in part]


def _map_and_evaluate(model: Any, chips: Any, X: np.ndarray, y: np.ndarray, conditions: Any,
                      device: str = "cpu") -> dict[str, np.ndarray]:
    """One task of a lot: its chips (profiles, or a callable that makes them, so a generated lot never passes
    through the driver) mapped here and evaluated; accuracies, mapping residuals (chips, layers), clipped counts."""
    from pnndeploy.deploy.mapping import map_models

    profiles = chips() if callable(chips) else chips
    deployments = map_models(model, profiles)
    return {"accuracy": _chip_batch_accuracy(model, profiles, deployments, X, y, conditions, device),
            "residual": np.array([[layer.residual for layer in d.layers] for d in deployments]),
            "clipped": np.array([d.clipped for d in deployments])}


def lot_accuracy(model: Any, batches: Sequence[Any], X: np.ndarray, y: np.ndarray, conditions: Any,
                 executor: str = "local", address: str | None = None,
                 num_cpus: int | None = None) -> dict[str, np.ndarray]:
    """Map and evaluate a lot of simulated chips batch by batch, one task per batch (a list of profiles or a
    callable making them): on Ray the mapping runs on the workers with the evaluation, not in the driver.

    The conditions are the same for every chip (a per-chip temperature or shift has no batch to follow here).
    Returns ``accuracy`` (chips,), ``residual`` (chips, layers) and ``clipped`` (chips,), in batch order.
    """
    if np.ndim(conditions.delta_T) or conditions.control_shift is not None:
        raise ExecutorError("a lot is evaluated under one temperature and no per-chip shift")
    if executor not in EXECUTORS:
        raise ExecutorError(f"--executor {executor!r} is unknown; use one of {', '.join(EXECUTORS)}")
    if not batches:
        raise ExecutorError("a lot of no batches: give at least one batch of chips")
    if executor == "local":
        parts = run_tasks(_map_and_evaluate, [(model, b, X, y, conditions) for b in batches])
    else:
        with ray_session(address, num_cpus) as ray:
            refs = (ray.put(model), ray.put(X), ray.put(y))
            args = [(refs[0], b, refs[1], refs[2], conditions) for b in batches]
            parts = run_tasks(_resolve_then(_map_and_evaluate), args, "ray", address, num_cpus)
    _raise_failures(parts, "tasks")
    parts = [p for p in parts if len(p["accuracy"])]          # a task that made no chip adds nothing
    if not parts:
        raise ExecutorError("the lot's batches made no chips")
    return {key: np.concatenate([p[key] for p in parts]) for key in ("accuracy", "residual", "clipped")}


def _resolve_then(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with object-store references among its arguments fetched first (nested lists are not resolved)."""
    def call(*args: Any) -> Any:
        import ray

        return fn(*(ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args))

    call.__name__ = fn.__name__
    return call
