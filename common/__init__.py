"""The code every task shares; installed as `psn_repro` (`pip install .`), imported as `common` in a clone.

The PSN family is at the top: `from psn_repro import PSN, MaskedPSN, SlidingPSN, create_neuron`.
"""
import sys as _sys
from pathlib import Path as _Path

__version__ = "0.1.0"


def _check_one_clone() -> None:
    """A clone's environment puts that clone on the path (its editable install); a script of another clone
    run there would import this clone's code without a word. Said instead, in one sentence (exit status 2)."""
    script = _sys.argv[0] if _sys.argv else ""
    if __name__ != "common" or not script.endswith(".py"):
        return  # installed as psn_repro, or not a script of a clone (python -c, pytest, a notebook)
    here = _Path(__file__).resolve().parent.parent
    try:
        clone = _Path(script).resolve().parents[1]
    except (IndexError, OSError):
        return
    if clone != here and (clone / "common" / "__init__.py").is_file():
        print(f"error: {script} is a script of the clone {clone}, but this environment imports the project from "
              f"{here} (the clone installed in it): run 'pip install --no-deps -e {clone}' here (or set "
              f"PYTHONPATH={clone}), or use that clone's own environment.", file=_sys.stderr)
        raise SystemExit(2)


_check_one_clone()
__all__ = ["PSN", "MaskedPSN", "SlidingPSN", "create_neuron", "__version__"]


def __getattr__(name):  # imported on first use: `import common.errors` stays free of torch
    if name in ("PSN", "MaskedPSN", "SlidingPSN"):
        from . import neurons

        return getattr(neurons, name)
    if name == "create_neuron":
        from .neuron_registry import create_neuron

        return create_neuron
    raise AttributeError(name)
