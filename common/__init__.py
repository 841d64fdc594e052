"""The code every task shares; installed as `psn_repro` (`pip install .`), imported as `common` in a clone.

The PSN family is at the top: `from psn_repro import PSN, MaskedPSN, SlidingPSN, create_neuron`.
"""
__version__ = "0.1.0"
__all__ = ["PSN", "MaskedPSN", "SlidingPSN", "create_neuron", "__version__"]


def __getattr__(name):  # imported on first use: `import common.errors` stays free of torch
    if name in ("PSN", "MaskedPSN", "SlidingPSN"):
        from . import neurons

        return getattr(neurons, name)
    if name == "create_neuron":
        from .neuron_registry import create_neuron

        return create_neuron
    raise AttributeError(name)
