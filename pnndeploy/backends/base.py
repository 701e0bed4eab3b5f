"""What pnndeploy needs from a chip on a test station, whatever drives it: the backend interface.

A backend is the one place where pnndeploy touches hardware.  It is layer-level: the
chip holds the control settings of every on-chip layer of a model (a slot per layer,
time-multiplexed onto the device array as the mapping tiles it) and measures one
layer's matrix-vector products at a time; gains, biases and ReLUs stay digital, in
pnndeploy, exactly as in the simulator.  A lab implements these few methods around
its instrument driver and registers the class under the ``pnndeploy.backends`` entry
point (see :mod:`pnndeploy.backends`); pnndeploy then programs, measures, calibrates
and trains through it.

Units: settings and sweep controls in the platform's control units (nm of detuning
for rings), temperatures in degrees Celsius, inputs as optical powers (the model's
scaled features), outputs in weight units (what balanced detection reads).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from pnndeploy.backends.credentials import Trust
from pnndeploy.errors import PnnError


class BackendError(PnnError):
    """The chip or its station cannot do what was asked, or answered wrongly: one line, exit 2."""


@dataclass(frozen=True)
class ChipInfo:
    """What a chip reports about itself when it is opened."""

    device_id: str
    platform: str
    array: tuple[int, int]                 # (rows, cols) of the device array
    firmware: str
    #: Which optional operations the station has: "temperature" (a thermo-electric controller),
    #: "measure_transfer" (per-device control sweeps for calibration).
    supports: frozenset[str] = frozenset()
    #: The station's chip temperature now, degrees Celsius (None: the station cannot read it).
    temperature_C: float | None = None
    #: Largest batch of input vectors one :meth:`ChipBackend.infer` call may carry.
    max_batch: int = 256
    #: Largest number of values (devices x points) one :meth:`ChipBackend.measure_transfer` may return.
    max_sweep_values: int = 65536
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "platform": self.platform, "array": list(self.array),
                "firmware": self.firmware, "supports": sorted(self.supports),
                "temperature_C": self.temperature_C, "max_batch": self.max_batch,
                "max_sweep_values": self.max_sweep_values}


@dataclass(frozen=True)
class LayerProgram:
    """The settings of one on-chip layer for slot ``index`` (weight_shape: the layer's (out, in))."""

    index: int
    weight_shape: tuple[int, int]
    settings: np.ndarray


class ChipBackend(ABC):
    """One chip on one station.  Open it (or use ``with``), then program, measure, close.

    ``address`` and ``options`` come from the profile's ``backend`` group; ``timeout`` (s) bounds
    every single exchange with the station, so no call can hang.  A profile may come from someone
    else: a backend reads the files its options name only through
    :func:`~pnndeploy.backends.credentials.credential_path` (inside the profile's ``tokens/``
    folder, :attr:`trust`) and its token through :func:`~pnndeploy.backends.credentials.token_from`.
    """

    #: The name profiles use in ``backend/kind``.
    kind: str = ""
    #: What the user decided for this run (set by :func:`pnndeploy.backends.open_backend` before ``open``).
    trust: Trust = Trust()
    #: Whether :meth:`measure_layer` takes ``meanwhile=``: work it may run (at most once) while the station
    #: measures, so that a caller's next computation overlaps the station's (the http backend's binary wire).
    #: A subclass that overrides ``measure_layer`` without that argument sets it False.
    measures_meanwhile: bool = False

    def __init__(self, address: str = "", options: Mapping[str, Any] | None = None, timeout: float = 10.0) -> None:
        self.address = address
        self.options = dict(options or {})
        self.timeout = float(timeout)

    def __enter__(self) -> "ChipBackend":
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @abstractmethod
    def open(self) -> ChipInfo:
        """Connect to the station; returns :meth:`info`."""

    @abstractmethod
    def close(self) -> None:
        """Release the station (idempotent)."""

    @abstractmethod
    def info(self) -> ChipInfo:
        """Device id, platform, array shape, firmware and what the station supports."""

    @abstractmethod
    def program(self, layers: Sequence[LayerProgram]) -> None:
        """Write the settings of the given layer slots (other slots keep theirs)."""

    @abstractmethod
    def infer(self, layer: int, x: np.ndarray) -> np.ndarray:
        """Measured outputs (batch, out) of layer slot ``layer`` for input powers ``x`` (batch, in)."""

    def measure_layer(self, program: LayerProgram, x: np.ndarray) -> tuple[np.ndarray, bool]:
        """Program ``program`` unless its slot already holds those settings, then measure ``x`` through it (in
        batches of ``max_batch``): (outputs (batch, out), whether it programmed).

        Why one call: a station that can do both in one exchange (the http backend) saves a round trip per
        layer and step, and one that can tell what the chip holds sends only what changed.  This default
        remembers what it programmed through this method, as an in-process driver may; a backend whose chip
        others can re-program must check (see :mod:`pnndeploy.backends.slots`)."""
        memory = self.__dict__.setdefault("_measure_programmed", {})
        previous = memory.get(program.index)
        programmed = previous is None or not np.array_equal(previous, program.settings)
        if programmed:
            self.program([program])
            memory[program.index] = np.array(program.settings, copy=True)
        step = self.__dict__.get("_measure_step")
        if step is None:              # the station's batch limit, asked once (info() may be a query of the station)
            step = self.__dict__["_measure_step"] = max(1, self.info().max_batch)
        if not len(x):
            return np.zeros((0, int(program.weight_shape[0]))), programmed
        return np.concatenate([self.infer(program.index, x[s:s + step]) for s in range(0, len(x), step)]), \
            programmed

    def set_temperature(self, celsius: float) -> None:
        """Set the chip's temperature (degrees Celsius) and wait until it has settled."""
        raise BackendError(f"the station of {self.address or self.kind} has no temperature controller; "
                           "a temperature sweep needs one (or audit simulated chips)")

    def measure_transfer(self, rows: np.ndarray, cols: np.ndarray, controls: np.ndarray) -> np.ndarray:
        """Sweep each device (rows[d], cols[d]) alone through ``controls`` (every other device at 0):
        the measured weight, (devices, points)."""
        raise BackendError(f"the station of {self.address or self.kind} cannot sweep single devices; "
                           "calibration by measurement needs measure_transfer")


def check_chip(info: ChipInfo, platform: str, array: tuple[int, int], device: str | None, where: str) -> None:
    """Refuse a chip that is not the one the profile describes (another platform, array or device)."""
    if info.platform != platform:
        raise BackendError(f"{where}: the chip reports platform {info.platform!r} but the profile is a "
                           f"{platform} chip; point the profile's backend at a {platform} chip")
    if tuple(info.array) != tuple(array):
        raise BackendError(f"{where}: the chip's firmware reports a {info.array[0]}x{info.array[1]} array but the "
                           f"profile describes {array[0]}x{array[1]}; this is another chip or firmware: check the "
                           "station, or measure a new profile for it")
    if device and info.device_id != device:
        raise BackendError(f"{where}: the station holds chip {info.device_id!r}, not {device!r} as the profile's "
                           "backend/device says; mount the right chip or fix the profile")
