"""The README's PSN demo: SpikingJelly's documented examples run on common.neurons."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_documented_examples_print_zero_errors():
    out = subprocess.run([sys.executable, "scripts/psn_demo.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    errors = re.findall(r"The error of two (?:step modes|backends) is tensor\(([^,)]+)", out.stdout)
    assert errors == ["0."] * 3, out.stdout
    assert out.stdout.count("weight = ") == 4
