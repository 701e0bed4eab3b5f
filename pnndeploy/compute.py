"""Where torch work runs: a compute device (the CPU's threads, or a CUDA GPU) and how many CPU threads it uses.

``--device`` names a *chip* everywhere in pnndeploy (the users' contract); the machine that computes is the
*compute device*, ``--compute auto|cpu|cuda[:N]`` (or ``$PNNDEPLOY_COMPUTE``), with ``--threads N`` CPU threads.
A :class:`Compute` is a small frozen value handed to what it configures (training, a simulated fleet, a
simulated chip), as aihwkit hands its settings to the tile they configure.

Threads.  torch's intra-op thread count is process-wide, so :meth:`Compute.running` sets it for the duration of
a piece of work and puts the previous value back.  With ``threads=None`` the count is chosen by the size of the
work: small models (the default ring MLPs, every model the golden test trains) run on one thread, where extra
threads only add synchronisation and their spin-waiting on a busy machine made a 1 s training take tens of
seconds; a model whose step is large enough to split (a conv front end on MNIST-sized images) gets every core.
Training's last bits depend on the thread count, so a reproducibility run names ``--threads 1``.

Nothing here imports torch at module level (``import torch`` costs ~2 s); a spec is parsed without torch, and
torch is asked about CUDA only when ``auto`` or ``cuda`` must be resolved.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator

from pnndeploy.errors import PnnError

#: Environment variable holding the default ``--compute``.
COMPUTE_ENV = "PNNDEPLOY_COMPUTE"
#: Environment variable holding the default ``--threads``.
THREADS_ENV = "PNNDEPLOY_THREADS"
#: Multiply-accumulates per training step above which automatic threading uses every core.  Measured on two
#: cores (benchmarks/compute.py): the paper's LeNet split (conv 6, 16 on 28 x 28 images, 784 -> 120 -> 84 -> 10,
#: batch 64: ~2e7 MACs a step) trains 1.4-1.7x faster on two threads; the default ring MLPs (64 -> 32 -> 10 and
#: 64 -> 128 -> 10, batch 32: 0.07e6-0.3e6 MACs) gain nothing, and lose much on a busy machine.
PARALLEL_WORK = 2_000_000
#: The largest thread count accepted (a typo such as 20000 is refused rather than spawning threads).
MAX_THREADS = 1024
_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d{1,3}))?$")


class ComputeError(PnnError):
    """The compute device asked for is not on this machine, or a thread count is not a count."""


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):          # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Compute:
    """A resolved compute device (``"cpu"`` or ``"cuda:N"``) and a thread count (None: by the size of the work)."""

    device: str = "cpu"
    threads: int | None = None

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def torch_device(self) -> Any:
        import torch

        return torch.device(self.device)

    def cpu_threads(self, work: float | None = None) -> int:
        """Intra-op threads for a piece of work of ``work`` multiply-accumulates per step (None: large)."""
        if self.threads is not None:
            return self.threads
        if work is not None and work < PARALLEL_WORK:
            return 1
        return available_cores()

    @contextlib.contextmanager
    def running(self, work: float | None = None) -> Iterator["Compute"]:
        """Set torch's intra-op threads for this work (see :meth:`cpu_threads`), restore them afterwards; inside a
        piece of :func:`pnndeploy.threads.each_on_one_thread` they stay one (the pieces are the parallelism)."""
        import torch

        from pnndeploy.threads import in_piece

        if in_piece():
            yield self
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(self.cpu_threads(work))
        try:
            yield self
        finally:
            torch.set_num_threads(previous)

    def describe(self, work: float | None = None) -> str:
        """What a person reads: "cpu, 2 threads" or "cuda:0 (NVIDIA H100)"."""
        if self.is_cuda:
            import torch

            return f"{self.device} ({torch.cuda.get_device_name(self.torch_device())})"
        n = self.cpu_threads(work)
        return f"cpu, {n} thread{'s' if n != 1 else ''}"

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "threads": self.threads}


#: The compute of library calls that are given none: the CPU, threads by the size of the work.
CPU = Compute()


def parse_threads(value: Any, where: str = "--threads") -> int | None:
    """A thread count from a flag or the environment (None or "" or "auto": by the size of the work)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    try:
        n = int(str(value).strip()) if not isinstance(value, int) or isinstance(value, bool) else value
    except ValueError:
        n = 0
    if isinstance(n, bool) or not 1 <= n <= MAX_THREADS:
        raise ComputeError(f"{where} {value!r} is not a thread count; give a whole number from 1 to {MAX_THREADS} "
                           f"(this machine has {available_cores()} cores), or auto")
    return n


def resolve_compute(spec: str | None = None, threads: int | str | None = None) -> Compute:
    """The :class:`Compute` for ``--compute SPEC`` (default ``$PNNDEPLOY_COMPUTE``, else ``auto``) and ``--threads``.

    ``auto`` is the first CUDA device when torch sees one, else the CPU; ``cuda`` is ``cuda:0``.  A CUDA
    device that is not there is one line (exit 2), never a silent fall-back to the CPU.
    """
    where = "--compute"
    if spec is None:
        spec, where = os.environ.get(COMPUTE_ENV) or "auto", f"${COMPUTE_ENV}"
    if threads is None and os.environ.get(THREADS_ENV):
        threads = parse_threads(os.environ[THREADS_ENV], f"${THREADS_ENV}")
    threads = parse_threads(threads)
    match = _SPEC.match(str(spec).strip().lower())
    if match is None:
        raise ComputeError(f"{where} {spec!r} is not a compute device; use auto, cpu, cuda or cuda:N "
                           "(--device names a chip, --compute the machine that computes)")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        if index is not None:
            raise ComputeError(f"{where} {spec!r}: the CPU takes no index; use cpu (and --threads N)")
        return Compute("cpu", threads)
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "auto":
        if index is not None:
            raise ComputeError(f"{where} {spec!r}: auto takes no index; use cuda:{index}")
        return Compute("cuda:0" if count else "cpu", threads)
    n = int(index or 0)
    if count == 0:
        raise ComputeError(f"{where} {spec}: no CUDA device on this machine (torch {torch.__version__}, "
                           f"{'built without CUDA' if torch.version.cuda is None else 'no GPU visible'}); "
                           "use --compute cpu, or auto to take a GPU only when there is one")
    if n >= count:
        raise ComputeError(f"{where} {spec}: this machine has {count} CUDA device{'s' if count > 1 else ''} "
                           f"(cuda:0..cuda:{count - 1}); pick one of them")
    return Compute(f"cuda:{n}", threads)
