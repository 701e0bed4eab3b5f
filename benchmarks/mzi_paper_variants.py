"""What the paper's MZI set-up would give with one of the authors' choices that pnndeploy does not make: the
experiments behind README "The paper's MZI, as built" (why SAT in silico stays below the paper's 92.3 %).

Each variant patches one thing in this process only, then runs ``benchmarks/mzi_paper.py`` with the remaining
arguments (the exported file of a patched run is not a pnndeploy model to deploy; nothing here ships):

* ``signed``: the mesh sees the front end's last dense layer *signed* (no ReLU after fc2), as the authors' fc2
  feeds their mesh (training, the numpy forward and the ONNX graph alike);
* ``powers-as-logits``: the normalised port powers are the logits (the digital gain fixed at 1, no bias), as
  the authors read the first ten ports;
* ``phase-lr``: Adam at ``--phase-lr`` (default the paper's 0.1) on the mesh phases, the config's lr elsewhere.

    python benchmarks/mzi_paper_variants.py signed --seeds 1 --methods standard,sat
    python benchmarks/mzi_paper_variants.py phase-lr --phase-lr 0.1 --seeds 1 --methods sat
    python benchmarks/mzi_paper.py --seeds 1 --methods sat --epochs 100      # the fifth test: more steps
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402

from pnndeploy.formats import digital  # noqa: E402
from pnndeploy.formats import onnx_io  # noqa: E402
from pnndeploy.training import model as model_module  # noqa: E402


def signed() -> None:
    """No ReLU after the front end's last dense layer, in training, in the numpy forward and in the ONNX graph."""
    def front_forward(self, x):
        frozen = self._updates_left == 0
        if self.convs:
            x = x.reshape(x.shape[0], *self.image_shape)
            for k, conv in enumerate(self.convs):
                x = torch.max_pool2d(torch.relu(self._norm(self.conv_norms, k, conv(x), frozen)), digital.POOL)
            x = x.flatten(1)
        for k, dense in enumerate(self.denses):
            y = self._norm(self.dense_norms, k, dense(x), frozen)
            x = y if k == len(self.denses) - 1 else torch.relu(y)
        if self.training and self._updates_left:
            self._updates_left -= 1
        return x

    def numpy_forward(self, X):
        h = np.asarray(X, dtype=np.float32)
        if self.input_shape is not None:
            h = h.reshape(h.shape[0], *self.input_shape)
        last = max(i for i, layer in enumerate(self.layers) if layer.kind == "dense")
        for i, layer in enumerate(self.layers):
            if layer.kind == "conv":
                h = digital._max_pool(np.maximum(digital._conv(h, layer.weight, layer.bias), 0.0))
            else:
                h = h.reshape(h.shape[0], -1) @ layer.weight.T + layer.bias
                h = h if i == last else np.maximum(h, 0.0)
        return np.ascontiguousarray(h.reshape(h.shape[0], -1), dtype=np.float32)

    written = digital.onnx_nodes

    def onnx_nodes(front, source):
        nodes, inits, h = written(front, source)
        last = [layer for layer in front.layers if layer.kind == "dense"][-1].name
        for node in nodes:
            if node.name == f"{last}.relu":
                node.op_type = "Identity"
        return nodes, inits, h

    model_module.FrontEnd.forward = front_forward
    digital.DigitalFrontEnd.forward = numpy_forward
    onnx_io.onnx_nodes = onnx_nodes


def powers_as_logits() -> None:
    """The mesh layer's gain fixed at 1 and its bias at 0, neither trained."""
    made = model_module.OnChipLayer.__init__

    def init(self, *args, **kwargs):
        made(self, *args, **kwargs)
        with torch.no_grad():
            self.gain.fill_(1.0)
            self.bias.zero_()
        self.gain.requires_grad_(False)
        self.bias.requires_grad_(False)

    model_module.OnChipLayer.__init__ = init


def phase_lr(lr: float) -> None:
    """Adam at ``lr`` on the on-chip controls, the run's lr on everything else."""
    made = model_module.OnChipLayer.__init__

    def init(self, *args, **kwargs):
        made(self, *args, **kwargs)
        self.controls.is_phase = True

    base = torch.optim.Adam

    class SplitAdam(base):
        def __init__(self, params, lr_rest=1e-3, **kwargs):
            params = list(params)
            phases = [p for p in params if getattr(p, "is_phase", False)]
            rest = [p for p in params if not getattr(p, "is_phase", False)]
            groups = [g for g in ({"params": rest}, {"params": phases, "lr": lr}) if g["params"]]
            super().__init__(groups, lr=kwargs.pop("lr", lr_rest), **kwargs)

    model_module.OnChipLayer.__init__ = init
    torch.optim.Adam = SplitAdam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=("signed", "powers-as-logits", "phase-lr"))
    parser.add_argument("--phase-lr", type=float, default=0.1)
    args, rest = parser.parse_known_args()
    {"signed": signed, "powers-as-logits": powers_as_logits, "phase-lr": lambda: phase_lr(args.phase_lr)}[
        args.variant]()
    import mzi_paper

    sys.argv = ["mzi_paper.py", *rest]
    mzi_paper.main()


if __name__ == "__main__":
    main()
