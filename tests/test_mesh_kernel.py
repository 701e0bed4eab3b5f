"""The compiled mesh kernel (numba; :mod:`pnndeploy.platforms.mesh_kernel`): torch's bits where it takes over, torch
where it would not give them, and only once the process has realised the work its compile pays for."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from pnndeploy.platforms import get_platform, mesh_kernel
from pnndeploy.platforms.base import ChipState
from pnndeploy.platforms.mesh import mesh_unitary, mzi_count
from pnndeploy.threads import one_thread

#: Mode counts where the kernel gives torch's bits on the machines this project runs on (CI's and these sessions':
#: the probe decides per process, and :func:`test_the_probe_says_what_a_larger_sample_shows` checks it; a machine
#: where 16 or 64 does not agree fails here on purpose: the kernel would then never take the default meshes).
AGREEING = [2, 3, 4, 8, 9, 10, 16, 32, 64]


@pytest.fixture
def hot(monkeypatch):
    """The kernel takes over at once (as after COMPILE_AFTER_MESHES of work)."""
    monkeypatch.setattr(mesh_kernel, "COMPILE_AFTER_MESHES", 0)


@pytest.fixture
def cold(monkeypatch):
    """torch realises every mesh (the kernel never takes over)."""
    monkeypatch.setattr(mesh_kernel, "takes", lambda *args: False)


def _bits(U: torch.Tensor) -> torch.Tensor:
    """U's float32 bits, every NaN as one pattern (x86 makes NaN of either sign; a NaN's sign means nothing): so
    -0.0 against 0.0 is a difference, and NaN must sit where NaN sits."""
    parts = torch.view_as_real(U.contiguous())
    return torch.where(torch.isnan(parts), torch.tensor(float("nan")), parts).view(torch.int32)


def _hostile(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Phases (3, 2, 5, n^2) with NaN, inf, -inf and -0.0 among them, and meshes in the bar and cross states (every
    phase 0 or pi: a U of exact zeros, whose signs the products must get as torch does); ratios (3, 1, 1, M, 2)
    with 0 and 1."""
    phases = torch.from_numpy(rng.uniform(-7, 7, (3, 2, 5, n * n)).astype(np.float32))
    phases[:, 1, 2] = 0.0
    phases[:, 1, 3] = float(np.pi)
    phases[:, 1, 4, :mzi_count(n)] = float(np.pi)
    phases[0, 0, 0, 1] = float("nan")
    phases[1, 0, 0, 0] = -0.0
    phases[2, 1, 1, -1] = float("inf")
    phases[2, 0, 3, 0] = -float("inf")
    ratios = torch.from_numpy(rng.uniform(0.3, 0.7, (3, 1, 1, mzi_count(n), 2)).astype(np.float32))
    ratios[0, 0, 0, 0, 0] = 0.0
    ratios[1, 0, 0, -1, 1] = 1.0
    return phases, ratios


@pytest.mark.parametrize("n", AGREEING)
def test_the_kernel_realises_torchs_bits(n: int) -> None:
    """Every mesh's U from the kernel is torch's, bit for bit (NaN, inf, -0.0 phases and couplers at 0 and 1
    included; NaN where torch has NaN, of either sign), for per-chip, shared and ideal couplers."""
    assert mesh_kernel.agrees(n)
    phases, ratios = _hostile(n, np.random.default_rng(n))
    for r in (ratios, ratios[1, 0, 0], None):
        with one_thread():
            want = mesh_unitary(phases, n, r, aligned=True, kernel=False)
            got = mesh_kernel.unitaries(phases, n, r)
        assert got.shape == want.shape == (3, 2, 5, n, n) and got.dtype == torch.complex64
        assert torch.equal(_bits(got), _bits(want))
    assert torch.isnan(got).any() and not torch.isnan(got[1]).any()


@pytest.mark.parametrize("n", [2, 4, 8])
def test_meshes_of_exact_zeros_get_torchs_signed_zeros(n: int) -> None:
    """Meshes whose phases are multiples of pi/2 and whose couplers split 0, 1/4, 1/2 or all: U full of exact
    zeros, whose signs depend on every product and on torch's add (it multiplies the addend by 1 + 0i)."""
    rng = np.random.default_rng(11 + n)
    values = np.array([0.0, -0.0, np.pi, -np.pi, np.pi / 2, -np.pi / 2, 3 * np.pi / 2, 2 * np.pi], np.float32)
    phases = torch.from_numpy(rng.choice(values, (4000, n * n)))
    ratios = torch.from_numpy(rng.choice(np.array([0.0, 0.25, 0.5, 1.0], np.float32), (4000, mzi_count(n), 2)))
    for r in (ratios, None):
        with one_thread():
            want = mesh_unitary(phases, n, r, aligned=True, kernel=False)
            got = mesh_kernel.unitaries(phases, n, r)
        assert torch.equal(_bits(got), _bits(want))
    assert bool((got == 0).any())


def test_no_meshes_are_no_meshes(hot) -> None:
    assert mesh_unitary(torch.rand(0, 64), 8, aligned=True).shape == (0, 8, 8)
    assert mesh_kernel.unitaries(torch.rand(2, 0, 64), 8, None).shape == (2, 0, 8, 8)


def test_the_loop_refuses_what_it_cannot_index() -> None:
    """The loop reads without bounds checks: blocks or couplers that are not one set per chip of the layer's shape
    are refused before it runs (they would read past the arrays, or take another chip's couplers)."""
    n, m = 8, mzi_count(8)
    angles = mesh_kernel.aligned(torch.rand(3, 2, 2, n * n), n)
    terms = mesh_kernel.coupler_terms(torch.full((3, m, 2), 0.5), n)
    assert mesh_kernel.real_blocks(angles, terms, n, (16, 10)).shape == (3, 16, 10)
    for bad in ((angles[:, :1], terms, (16, 10)), (angles, terms[:2], (16, 10)), (angles, terms, (24, 10)),
                (angles, mesh_kernel.coupler_terms(torch.full((6, m, 2), 0.5), n), (16, 10))):
        with pytest.raises(ValueError, match="not one"):
            mesh_kernel.real_blocks(bad[0], bad[1], n, bad[2])


@pytest.mark.parametrize("n", [5, 6, 7, 8, 9])
def test_the_probe_says_what_a_larger_sample_shows(n: int) -> None:
    """``agrees(n)`` (a probe of six meshes) says whether 200 other random meshes come out with torch's bits: where
    torch's own column product rounds some lanes otherwise (5, 6 and 7 modes here: n mod 8 in 5..7), the kernel
    stands aside."""
    rng = np.random.default_rng(100 + n)
    phases = torch.from_numpy(rng.uniform(-7, 7, (200, n * n)).astype(np.float32))
    ratios = torch.from_numpy(rng.uniform(0.3, 0.7, (200, mzi_count(n), 2)).astype(np.float32))
    with one_thread():
        same = torch.equal(_bits(mesh_kernel.unitaries(phases, n, ratios)),
                           _bits(mesh_unitary(phases, n, ratios, aligned=True, kernel=False)))
    assert mesh_kernel.agrees(n) == same


def test_where_the_probe_disagrees_torch_realises_the_meshes(hot, monkeypatch) -> None:
    monkeypatch.setattr(mesh_kernel, "agrees", lambda n: False)
    phases = torch.rand(4, 64)
    assert not mesh_kernel.takes(8, phases, None)
    monkeypatch.setattr(mesh_kernel, "unitaries", lambda *a: pytest.fail("the kernel ran"))
    mesh_unitary(phases, 8, None, aligned=True)


def _coherent_state(n: int, shape: tuple[int, int], chips: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    to, ti = -(-shape[0] // n), -(-shape[1] // n)
    return {"static": torch.from_numpy(rng.uniform(-1, 7, (chips, to, ti, n * n)).astype(np.float32)),
            "drift": torch.from_numpy(rng.uniform(0, 0.1, (chips, 1, 1, n * n)).astype(np.float32)),
            "ratios": torch.from_numpy(rng.uniform(0.4, 0.6, (chips, 1, 1, mzi_count(n), 2)).astype(np.float32)),
            "shape": (*shape, n)}


@pytest.mark.parametrize("n, shape", [(16, (40, 48)), (16, (40, 33)), (8, (10, 30)), (32, (64, 20))])
def test_a_coherent_fleets_weights_are_torchs_bits_in_place(monkeypatch, n: int, shape) -> None:
    """The kernel writes each chip's Re U blocks straight into its weights, cropped: the bits of torch's passes,
    at a drift and a control shift, for every chip of a slice."""
    platform = get_platform("mzi").configure({"modes": n})
    state = _coherent_state(n, shape, 4, seed=n)
    conditions = ChipState(torch.tensor([0.3, -0.7, 1.1]), torch.full((3, n * n), 0.01))
    with monkeypatch.context() as m:
        m.setattr(mesh_kernel, "takes", lambda *args: False)
        want = platform._realise(state, slice(1, 4), conditions)
    monkeypatch.setattr(mesh_kernel, "COMPILE_AFTER_MESHES", 0)
    got = platform._realise(state, slice(1, 4), conditions)
    assert "kernel_form" in state and got.shape == want.shape == (3, *shape)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_an_intensity_fleets_read_out_is_torchs_bits(monkeypatch) -> None:
    """The paper's read-out (|U x|^2 of an 8-mode mesh, normalised) through the kernel: the same bits."""
    platform = get_platform("mzi").configure({"modes": 8, "detection": "intensity"})
    rng = np.random.default_rng(4)
    state = {"static": torch.from_numpy(rng.uniform(0, 6, (5, 64)).astype(np.float32)),
             "drift": torch.from_numpy(rng.uniform(0, 0.1, (5, 64)).astype(np.float32)),
             "ratios": torch.from_numpy(rng.uniform(0.4, 0.6, (5, mzi_count(8), 2)).astype(np.float32)),
             "shape": (5, 6)}
    x = torch.from_numpy(rng.random((6, 9))).float()
    conditions = ChipState(torch.tensor(0.4))
    with monkeypatch.context() as m:
        m.setattr(mesh_kernel, "takes", lambda *args: False)
        want = platform.fleet_forward(state, slice(0, 5), x, conditions)
    monkeypatch.setattr(mesh_kernel, "COMPILE_AFTER_MESHES", 0)
    monkeypatch.setattr(mesh_kernel, "unitaries", _counted(mesh_kernel.unitaries))
    got = platform.fleet_forward(state, slice(0, 5), x, conditions)
    assert mesh_kernel.unitaries.calls and got.shape == (5, 5, 9)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    empty = platform.fleet_forward(state, slice(2, 2), x, conditions)
    assert empty.shape == (0, 5, 9)


def _counted(function):
    def wrapper(*args, **kwargs):
        wrapper.calls += 1
        return function(*args, **kwargs)
    wrapper.calls = 0
    return wrapper


def test_the_kernel_takes_over_once_the_work_pays_for_its_compile(monkeypatch) -> None:
    """Not before :data:`COMPILE_AFTER_MESHES` of work (16-mode meshes, a 32-mode mesh counting 8) unless it is
    compiled already; never for float64, a gradient, or without numba."""
    monkeypatch.setattr(mesh_kernel, "COMPILE_AFTER_MESHES", 1000)
    monkeypatch.setattr(mesh_kernel, "_seen", 0)
    monkeypatch.setattr(mesh_kernel, "compiled", lambda: False)
    phases = torch.rand(2, 256)
    assert not mesh_kernel.takes(16, phases, None)
    mesh_kernel.realised(100, 32)                       # 800 meshes' worth
    assert not mesh_kernel.takes(16, phases, None)
    mesh_kernel.realised(200, 16)
    assert mesh_kernel.takes(16, phases, None)
    assert not mesh_kernel.takes(16, phases.double(), None)
    assert not mesh_kernel.takes(16, phases.clone().requires_grad_(True), None)
    assert not mesh_kernel.takes(16, phases, torch.rand(120, 2, dtype=torch.float64))
    assert not mesh_kernel.takes(16, phases, None, torch.tensor([0.5, 1.0], dtype=torch.float64))   # a drift
    monkeypatch.setattr(mesh_kernel, "available", lambda: False)
    assert not mesh_kernel.takes(16, phases, None)


def test_a_fleet_counts_the_meshes_it_realises(monkeypatch) -> None:
    platform = get_platform("mzi").configure({"modes": 16})
    state = _coherent_state(16, (40, 33), 4, seed=1)                # 3 x 3 blocks a chip
    monkeypatch.setattr(mesh_kernel, "_seen", 0)
    platform._realise(state, slice(0, 3), ChipState(torch.tensor(0.2)))
    assert mesh_kernel._seen == 27


def test_a_float64_drift_keeps_torchs_float64_weights(hot) -> None:
    """A per-chip drift in float64 makes torch realise float64 phases: the kernel (float32) stands aside."""
    platform = get_platform("mzi").configure({"modes": 16})
    state = _coherent_state(16, (40, 33), 3, seed=2)
    W = platform._realise(state, slice(0, 3), ChipState(torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)))
    assert W.dtype == torch.float64


def test_a_mesh_that_needs_its_gradient_is_built_by_torch(hot) -> None:
    phases = torch.rand(3, 64, requires_grad=True)
    U = mesh_unitary(phases, 8, None, aligned=True)
    U.real.sum().backward()
    assert phases.grad is not None and torch.isfinite(phases.grad).all()


#: A fresh process's two-chip coherent 16-mode fleet layer realised once (``W``), for the subprocess tests below.
_COHERENT_FLEET = ("import sys, torch; from pnndeploy.platforms import get_platform, mesh_kernel; "
                   "from pnndeploy.platforms.base import ChipState; {before}"
                   "p = get_platform('mzi').configure({{'modes': 16}}); "
                   "s = {{'static': torch.rand(2, 1, 1, 256), 'drift': torch.rand(2, 1, 1, 256), "
                   "'ratios': torch.full((2, 1, 1, 120, 2), 0.5), 'shape': (16, 16, 16)}}; "
                   "W = p._realise(s, slice(0, 2), ChipState(torch.tensor(0.1))); ")


def test_without_numba_a_fleet_is_realised_by_torch() -> None:
    """numba not installed (the fast extra left out): past the threshold, a coherent and an intensity fleet still
    evaluate, through torch."""
    code = ("import sys; sys.modules['numba'] = None; "
            + _COHERENT_FLEET.format(before="mesh_kernel.COMPILE_AFTER_MESHES = 0; ")
            + "q = get_platform('mzi').configure({'modes': 8, 'detection': 'intensity'}); "
            "t = {'static': torch.rand(2, 64), 'drift': torch.rand(2, 64), 'ratios': torch.full((2, 28, 2), 0.5), "
            "'shape': (4, 5)}; y = q.fleet_forward(t, slice(0, 2), torch.rand(5, 3), ChipState(torch.tensor(0.1))); "
            "print(tuple(W.shape), tuple(y.shape), mesh_kernel.available(), 'pnndeploy.platforms.mesh_loops' in "
            "sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(2, 16, 16) (2, 4, 3) False False"


def test_the_kernel_is_not_imported_until_it_takes_over() -> None:
    """An MZI fleet evaluated below the threshold imports neither numba nor the loops (numba costs 0.3 s to import
    and its compile 2 s)."""
    code = (_COHERENT_FLEET.format(before="")
            + "print(sorted(m for m in ('numba', 'pnndeploy.platforms.mesh_loops') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
