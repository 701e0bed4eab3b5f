"""Many meshes realised by a compiled loop per mesh (numba), bit for bit what torch realises, where it pays.

A fleet's evaluation at a new drift is mostly realising its meshes: 16 column products of ~64 small torch ops
each, every op streaming a pass's unitaries through the cache (12-16 us a 16-mode mesh on one core).  The loops
of :mod:`mesh_loops` form the MZIs' entries, the column products and the output screen of one mesh at a time on
a unitary held in L1, and write a coherent layer's weights straight into their blocks.

**The same bits.**  Only torch's cos and sin (of the phases padded to whole vector blocks, as
``mesh_unitary(aligned=True)`` takes them) stay in torch; every other step is the same IEEE operation on the same
operands in the same order (:mod:`mesh_loops`; torch's add multiplies the addend by 1 + 0i, and its vectorised
sqrt is not numpy's, so the couplers' square roots are taken in torch).  Checked bit for bit against torch
(tests).  Where torch's own column product rounds some lanes otherwise (its vector loop's remainder: on this
machine the mode counts n with n mod 8 in 5..7) the kernel is not used: it proves itself against torch for each
mode count before it takes meshes of that size (:func:`agrees`), so a mesh's bits never depend on which path
realised it.

**Worth its compile.**  numba compiles the loops at their first calls (about 2.2 s with numba's import): more
than one evaluation of a few hundred chips saves.  So a process realises meshes in torch until it has realised
:data:`COMPILE_AFTER_MESHES` (a sweep, an audit, a large lot), and in the kernel from then on; the switch changes
no bit.  numba's on-disk cache is not used: it is pickled.

One thread: right after torch's multi-threaded ops (a fleet's matmuls) its OpenMP workers spin on the other cores
for milliseconds, and a loop run beside them gained nothing (measured; alone, two threads gave 1.6x).  numba is optional
(``pip install 'pnndeploy[fast]'``); without it torch realises every mesh.
"""

from __future__ import annotations

import math
import sys
import threading
from functools import lru_cache
from typing import Any

import numpy as np

from pnndeploy.platforms.mesh import aligned_length, column_layout, mzi_count, padded
from pnndeploy.threads import one_thread

#: Work (in 16-mode meshes: a mesh of n modes counts (n / 16)^3) a process realises in torch before the kernel is
#: compiled and takes over.  The first use costs about 2.2 s (numba's import, two loops compiled); torch realises
#: about 60,000 16-mode meshes a second on one core here, the kernel 3-4x as many.  Switching once torch has spent
#: about what compiling costs never costs more than twice the better choice made in hindsight (a 512-chip fleet of
#: 10 blocks a chip is 5,120 meshes an evaluation: an audit's sweep of 30 temperatures).
COMPILE_AFTER_MESHES = 150_000

_LOOPS = "pnndeploy.platforms.mesh_loops"
_lock = threading.Lock()
_seen = 0


@lru_cache(maxsize=1)
def available() -> bool:
    """numba can be imported (the ``fast`` extra is installed); asked once a process."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def realised(meshes: int, n: int) -> None:
    """Count ``meshes`` meshes of ``n`` modes a fleet realised (in torch or the kernel) toward
    :data:`COMPILE_AFTER_MESHES`."""
    global _seen
    with _lock:
        _seen += meshes * (n / 16) ** 3


def takes(n: int, *tensors: Any) -> bool:
    """Whether meshes of ``n`` modes made from ``tensors`` (torch; None skipped: phases, ratios, and whatever else
    enters the phases, a drift, a shift) are realised by the kernel: all float32 on the CPU without a gradient (in
    float64 torch would realise them in float64), numba installed, the process has realised
    :data:`COMPILE_AFTER_MESHES` (:func:`realised`) or compiled the kernel already, and the kernel gives torch's bits
    for ``n`` modes on this machine (:func:`agrees`)."""
    import torch

    for t in tensors:
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu" or t.requires_grad):
            return False
    return n >= 2 and (_seen >= COMPILE_AFTER_MESHES or compiled()) and available() and agrees(n)


def compiled() -> bool:
    """The kernel's loops have been compiled in this process (it then realises every mesh it can)."""
    loops = sys.modules.get(_LOOPS)         # (another thread may be importing it: its names come last)
    unitaries_ = getattr(loops, "unitaries", None)
    return unitaries_ is not None and bool(unitaries_.signatures)


@lru_cache(maxsize=None)
def agrees(n: int) -> bool:
    """The kernel realises six ``n``-mode meshes (random phases and couplers; the bar and cross states) with torch's
    bits on this machine.

    The bits of torch's column product depend on how its vector loop covers a row of n complex numbers (a
    remainder may round otherwise), which depends on n and the machine: so the kernel proves itself for each n
    before it takes any mesh of that size, and torch keeps the sizes where it does not (on this machine n mod 8 in
    5..7: 5, 6, 7, 13, 14, 15, 22, ... ; 16, 32 and 64 agree)."""
    import torch

    from pnndeploy.platforms.mesh import mesh_unitary

    generator = torch.Generator().manual_seed(n)
    m = mzi_count(n)
    phases = torch.rand((2, 3, n * n), generator=generator) * 14.0 - 7.0
    phases[0, 0], phases[0, 1] = 0.0, math.pi              # the bar and cross states: exact zeros and their signs
    ratios = 0.3 + 0.4 * torch.rand((2, 1, m, 2), generator=generator)
    with one_thread(), torch.inference_mode():
        torch_bits = mesh_unitary(phases, n, ratios, aligned=True, kernel=False)
        kernel_bits = unitaries(phases, n, ratios)
    bits = [torch.view_as_real(U).view(torch.int32) for U in (torch_bits, kernel_bits)]
    return bool(torch.equal(*bits))


def unitaries(phases: Any, n: int, ratios: Any = None) -> Any:
    """U of meshes (torch complex64, (..., n, n)) from phases (..., n^2) and ratios (..., M, 2) (None: ideal), their
    leading axes broadcast: ``mesh_unitary(phases, n, ratios, aligned=True)``, bit for bit."""
    import torch

    from pnndeploy.platforms import mesh_loops

    m = mzi_count(n)
    if ratios is None:
        ratios = torch.full((m, 2), 0.5, dtype=phases.dtype)
    batch = tuple(np.broadcast_shapes(tuple(phases.shape[:-1]), tuple(ratios.shape[:-2])))
    meshes = int(np.prod(batch, dtype=np.int64))
    if not meshes:              # numpy gives an empty array zero strides, which torch cannot view as complex
        return torch.empty((*batch, n, n), dtype=torch.complex64)
    cos, sin = _cos_sin(aligned(phases.reshape(-1, n * n), n))
    out = np.empty((meshes, n, n, 2), dtype=np.float32)
    mesh_loops.unitaries(cos, sin, aligned_length(m), coupler_terms(ratios, n), _rows(phases.shape[:-1], batch),
                         _rows(ratios.shape[:-2], batch), *column_layout(n), out)
    return torch.view_as_complex(torch.from_numpy(out)).reshape(*batch, n, n)


def real_blocks(angles: Any, terms: np.ndarray, n: int, weight_shape: tuple[int, int],
                out: np.ndarray | None = None) -> Any:
    """A coherent layer's weights (chips, out, in) float32: Re U of each chip's (to, ti) blocks of meshes, from
    their :func:`aligned` phases (chips, to, ti, A) and each chip's :func:`coupler_terms` (chips, K, 4), blocks
    cropped to ``weight_shape``: the bits of ``mesh_unitary(phases, n, ratios, aligned=True).real`` put in place.
    ``out``: a C-ordered float32 array of that shape to write into (returned as a tensor either way)."""
    import torch

    from pnndeploy.platforms import mesh_loops

    chips = angles.shape[0]
    blocks = (-(-weight_shape[0] // n), -(-weight_shape[1] // n))
    W = np.empty((chips, *weight_shape), dtype=np.float32) if out is None else out
    # the loop indexes without bounds checks: what it is given must be what it assumes
    if (tuple(angles.shape) != (chips, *blocks, aligned_width(n)) or terms.shape != (chips, aligned_length(
            mzi_count(n)), 4) or W.shape != (chips, *weight_shape) or W.dtype != np.float32
            or not W.flags.c_contiguous):
        raise ValueError(f"real_blocks: angles {tuple(angles.shape)}, couplers {terms.shape} and weights "
                         f"{W.shape} are not one {blocks} set of blocks and of couplers per chip of a "
                         f"{weight_shape} layer")
    if chips:
        cos, sin = _cos_sin(angles.reshape(-1, angles.shape[-1]))
        mesh_loops.real_blocks(cos, sin, aligned_length(mzi_count(n)), terms, *column_layout(n), W)
    return torch.from_numpy(W)


def aligned(phases: Any, n: int) -> Any:
    """Phases (..., n^2) as the kernel takes them, (..., 2 K + L): theta, phi and psi each padded with zeros to
    whole :data:`mesh.ALIGN` blocks as ``mesh_unitary(aligned=True)`` pads them (so torch's vector loops give their
    cos and sin the same bits); phi from column K (:func:`mesh.aligned_length` of M), psi from 2 K."""
    import torch

    m = mzi_count(n)
    return torch.cat([padded(phases[..., :m], 0.0), padded(phases[..., m:2 * m], 0.0),
                      padded(phases[..., 2 * m:], 0.0)], dim=-1)


def coupler_terms(ratios: Any, n: int) -> np.ndarray:
    """Each set of couplers' products per MZI, (sets, K, 4) float32 numpy from ratios (..., M, 2): s1 s2, c1 c2,
    s1 c2, c1 s2 with s = sqrt(r), c = sqrt(1 - r), formed in torch as :func:`mesh._mzi_entries` forms them, on
    ratios padded to whole :data:`mesh.ALIGN` blocks as it pads them (torch's vectorised sqrt is not numpy's, nor
    its own scalar one)."""
    import torch

    flat = ratios.reshape(-1, mzi_count(n), 2)
    r1, r2 = padded(flat[..., 0], 0.5), padded(flat[..., 1], 0.5)
    s1, c1 = torch.sqrt(r1), torch.sqrt(1.0 - r1)
    s2, c2 = torch.sqrt(r2), torch.sqrt(1.0 - r2)
    return torch.stack([s1 * s2, c1 * c2, s1 * c2, c1 * s2], dim=-1).numpy()


def _cos_sin(angles: Any) -> tuple[np.ndarray, np.ndarray]:
    """torch's cos and sin of :func:`aligned` phases, (meshes, A) float32 numpy each."""
    import torch

    return torch.cos(angles).numpy(), torch.sin(angles).numpy()


def aligned_width(n: int) -> int:
    """Elements of a mesh's :func:`aligned` phases: 2 K + L."""
    return 2 * aligned_length(mzi_count(n)) + aligned_length(n)


def _rows(shape: tuple[int, ...], batch: tuple[int, ...]) -> np.ndarray:
    """For every mesh of ``batch`` (flattened), its row in an array of leading shape ``shape`` that broadcasts to it."""
    index = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)
    return np.ascontiguousarray(np.broadcast_to(index, batch).reshape(-1))
