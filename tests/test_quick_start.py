"""The README's first command, as written there: the paper's network learns digits, every time."""
import re
import shlex

import pytest

from conftest import ROOT, last_json, run_script


def readme_quick_start() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    install, train = block.splitlines()[0].split(" && ")
    assert install == "pip install -r requirements.txt"
    words = shlex.split(train)
    assert words[:2] == ["python", "cifar10/train.py"]
    return words[2:]


@pytest.mark.slow  # 2.5 minutes on 2 cores: python -m pytest -m slow
def test_the_readme_quick_start_learns_what_readme_says(tmp_path):
    """The command exactly as README gives it (only the output folder added), one thread (script_env): the
    default seed's best accuracy README states."""
    stated = float(re.search(r"\(the default seed: (\d+\.\d) %", (ROOT / "README.md").read_text()).group(1))
    out = run_script("cifar10/train.py", *readme_quick_start(), "--output-dir", tmp_path)
    assert last_json(out.stdout)["best_test_acc1"] == pytest.approx(stated, abs=0.05)
