"""What a user installs and cites: the license, the citation, the package metadata, and an installed package
that puts one unambiguous name on the path."""
import subprocess
import sys
import tomllib
import zipfile

import yaml

from conftest import ROOT, script_env


def test_license_citation_and_metadata():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    paper = citation["preferred-citation"]
    assert paper["title"].startswith("Parallel Spiking Neurons with High Efficiency") and paper["year"] == 2023
    assert [a["family-names"] for a in paper["authors"]][:2] == ["Fang", "Yu"] and citation["license"] == "MIT"
    readme = (ROOT / "README.md").read_text()
    assert "@inproceedings{fang2023parallel" in readme
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["readme"] == "README.md"
    assert "fangwei123456/Parallel-Spiking-Neuron" in project["urls"]["Original repository"]
    released = readme.split("## Released checkpoints and the paper's tables", 1)[1].lstrip()
    assert released.startswith("```python\nmodel = torch.hub.load(")  # the section starts with the one-liner


def test_the_installed_package_is_one_unambiguous_name(tmp_path):
    import shutil

    source = tmp_path / "source"  # built from a copy: the build's scratch folders stay out of the clone
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "common", source / "common", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "wheel"), str(source)], check=True, capture_output=True, env=script_env())
    wheel = next((tmp_path / "wheel").glob("psn_repro-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"psn_repro", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True, env=script_env())
    code = ("import torch, psn_repro; from psn_repro import PSN, SlidingPSN, create_neuron\n"
            "from psn_repro.neurons import MaskedPSN\n"
            "assert PSN(T=4)(torch.rand(4, 3)).shape == (4, 3) and create_neuron('mspsn', None, order=2).k == 2\n"
            "import importlib.util as u\n"
            "site = psn_repro.__file__.rsplit('psn_repro', 1)[0]\n"  # the wheel brings no other name (a clone's
            "assert not any((u.find_spec(m) and u.find_spec(m).origin or '').startswith(site)\n"  # own env has them)
            "           for m in ('common', 'cifar10', 'scripts', 'hubconf'))\n"
            "print(psn_repro.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env=script_env(PYTHONPATH=str(tmp_path / "site")))
    assert out.returncode == 0 and str(tmp_path / "site") in out.stdout, out.stderr


def test_the_clones_scripts_run_from_anywhere_without_path_edits(tmp_path):
    """The clone's environment installs it editable (requirements.txt's last line): a task and a script run from
    another working directory, with no PYTHONPATH, and import the clone by name."""
    env = {k: v for k, v in script_env().items() if k != "PYTHONPATH"}
    for script in ("cifar10/train.py", "scripts/reproduce.py"):
        out = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.startswith("usage:"), \
            f"{script}: {out.stderr[-500:]} (is the clone installed? pip install -r requirements.txt ends with -e .)"
    source = "\n".join((ROOT / script).read_text() for script in ("cifar10/train.py", "scripts/reproduce.py"))
    assert "sys.path" not in source and "noqa: E402" not in source


def test_a_script_of_another_clone_says_which_code_it_would_run(tmp_path):
    import shutil

    other = tmp_path / "other"
    for folder in ("common", "cifar10"):
        shutil.copytree(ROOT / folder, other / folder, ignore=shutil.ignore_patterns("__pycache__"))
    script = other / "cifar10" / "train.py"
    out = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, capture_output=True, text=True,
                         env=script_env(PYTHONPATH=str(ROOT)), timeout=120)  # this clone's code on the path
    assert out.returncode == 2 and out.stdout == "", out.stderr
    assert out.stderr.startswith(f"error: {script} is a script of the clone {other}") and \
        f"pip install --no-deps -e {other}" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    own = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, capture_output=True, text=True,
                         env=script_env(PYTHONPATH=str(other)), timeout=120)  # its own code: it runs
    assert own.returncode == 0 and own.stdout.startswith("usage:"), own.stderr
