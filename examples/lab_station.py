"""A lab's own station as a pnndeploy backend: the example of README, "Connecting a lab's station".

Register it in your package's pyproject.toml and name it in a profile:

    [project.entry-points."pnndeploy.backends"]
    mystation = "lab_station:LabStation"

    pnndeploy chip connect chipB --kind mystation --address /dev/ttyUSB0 --name chipB-lab

Here the instrument calls are played by pnndeploy's simulated chip (the profile in ``address``),
so the example runs as it is (tests/test_backends.py plugs it in); replace each marked line by
your driver's call.  This station has no temperature controller, so `audit` refuses it.
"""

import numpy as np

from pnndeploy.backends.base import BackendError, ChipBackend, ChipInfo
from pnndeploy.backends.simulated import SimulatedChip


class LabStation(ChipBackend):
    kind = "mystation"

    def open(self) -> ChipInfo:
        self.driver = SimulatedChip(self.address)          # driver = mylab.Station(self.address, timeout=...)
        return self.info()

    def close(self) -> None:
        self.driver = None                                 # driver.close()

    def info(self) -> ChipInfo:
        chip = self.driver.info()                          # read id, array and firmware from the station
        return ChipInfo(device_id=chip.device_id, platform=chip.platform, array=chip.array,
                        firmware="lab-station 1.0", supports=frozenset({"measure_transfer"}),
                        temperature_C=25.0, max_batch=64)  # the station's thermometer

    def program(self, layers) -> None:
        for layer in layers:                               # settings in nm of detuning -> heater DAC codes
            if not np.all(np.isfinite(layer.settings)):
                raise BackendError(f"layer {layer.index}: refusing to program NaN heater settings")
        self.driver.program(layers)                        # driver.write_heaters(slot, codes)

    def infer(self, layer: int, x: np.ndarray) -> np.ndarray:
        return self.driver.infer(layer, x)                 # driver.modulate(x); driver.read_detectors()

    def measure_transfer(self, rows, cols, controls) -> np.ndarray:
        return self.driver.measure_transfer(rows, cols, controls)   # one heater swept, detector read
