"""What a newcomer meets first: README's PSN snippet prints what README says, a network that never fires is
said, --test-only --spike-stats lands in the run's TensorBoard, the table tool tells a run in progress."""
import json
import re
import subprocess
import sys

import pytest
import torch

from conftest import QUICK, ROOT, last_json, read_scalars, run_script, script_env


def test_the_readme_psn_snippet_prints_the_firing_rates_readme_gives():
    text = (ROOT / "README.md").read_text()
    snippet = re.search(r"## The PSN family\n\n```python\n(.*?)```", text, re.S).group(1)
    stated = dict(re.findall(r"`(\w+) firing rate (\d\.\d+)`", text.split("## The PSN family")[1]))
    assert set(stated) == {"PSN", "MaskedPSN", "SlidingPSN"}
    out = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, env=script_env(), capture_output=True, text=True,
                         timeout=120, check=True).stdout
    printed = dict(re.findall(r"(\w+) firing rate (\d\.\d+)", out))
    for name, rate in stated.items():
        assert 0 < float(printed[name]) < 1 and float(printed[name]) == pytest.approx(float(rate), abs=0.002), out


def test_layers_that_never_fire_are_named_without_a_sync_per_step():
    from common.distributed import DistEnv
    from common.neurons import PSN
    from common.spike_stats import SilenceWatch, silence_warning

    net = torch.nn.Sequential(PSN(T=4), PSN(T=4))
    with torch.no_grad():
        net[1].bias.fill_(-100.0)  # the second layer's threshold out of reach
    with SilenceWatch(net) as watch:
        for _ in range(3):
            net(torch.rand(4, 8) * 4)
        assert watch.counts.device.type == "cpu" and watch.counts[0] > 0 and watch.counts[1] == 0
    assert watch.silent(DistEnv()) == ["1"] and not net[0]._forward_hooks  # the hooks are gone
    assert silence_warning(["1"], 2, 1).startswith("warning: 1 of 2 spiking layers never fired (1) in epoch 1: ")
    assert silence_warning(["0", "1"], 2, 3).startswith("warning: no spiking layer fired in epoch 3: ")


def test_training_says_when_a_layer_never_fired(tmp_path):
    """The paper's recipe (SGD lr 0.1, flips, TrivialAugment, mixup) on the 1,437 digits: the sequential network's
    last spiking layer stays silent in epoch 1, and the run says so once (a layer that fires is not named: the
    unit test above)."""
    silent = run_script("sequential_cifar/train.py", "--dataset", "digits", "--channels", "32", "--workers", "0",
                        "--device", "cpu", "--epochs", "1", "--output-dir", tmp_path, "--run-name", "silent")
    assert silent.stderr.count("never fired") + silent.stderr.count("no spiking layer fired") == 1, silent.stderr
    assert "never fired (fc.2)" in silent.stderr or "no spiking layer fired" in silent.stderr
    assert last_json(silent.stdout)["last_test_acc1"] < 20  # chance: 10 %


def test_test_only_spike_stats_land_in_the_runs_tensorboard(tmp_path):
    run_script("cifar10/train.py", *QUICK, "--epochs", "1", "--output-dir", tmp_path, "--run-name", "r")
    run_dir = tmp_path / "r"
    out = run_script("cifar10/train.py", *QUICK, "--test-only", "--spike-stats", "--resume",
                     run_dir / "checkpoint_latest.pth")
    record = last_json(out.stdout)
    assert f"spike statistics written to {run_dir}" in out.stdout
    scalars = read_scalars(run_dir)
    for layer, rate in record["firing_rates"].items():
        assert scalars[f"spikes/{layer}"] == [(1, pytest.approx(rate, rel=1e-6))]  # at the run's epoch 1
    assert scalars["spikes/synops_per_sample"][0][1] == pytest.approx(record["synops_per_sample"], rel=1e-6)
    assert [s for s, _ in scalars["test/acc1"]] == [1]  # the run's own curves are untouched
    released = run_script("cifar10/train.py", "--test-only", "--spike-stats", "--device", "cpu", "--dataset",
                          "digits", "--workers", "0", "--resume", ROOT / "tests/fixtures/original/cifar10_psn_c32_T4.pth")
    assert "spike statistics written" not in released.stdout  # a file outside a run writes nothing beside it
    assert not list((ROOT / "tests/fixtures/original").glob("events.out.tfevents*"))


def test_the_table_tool_tells_a_run_in_progress_and_draws_a_one_point_curve(tmp_path, capsys):
    from scripts import paper_tables

    run_script("cifar10/train.py", *QUICK, "--epochs", "5", "--stop-after", "1", "--output-dir", tmp_path / "runs",
               "--run-name", "r")
    (tmp_path / "runs" / "r" / "summary.json").unlink()  # as a run still training has none yet
    assert paper_tables.main([str(tmp_path / "runs"), "--plots", str(tmp_path / "plots"), "--json",
                              str(tmp_path / "t.json")]) == 0
    table = capsys.readouterr().out
    assert "(in progress: 1 of 5 epochs)" in table, table
    runs = json.loads((tmp_path / "t.json").read_text())
    assert runs[0]["progress"] == "in progress: 1 of 5 epochs"
    assert (tmp_path / "plots" / "cifar10_digits_test_acc.png").is_file()


def test_the_authors_curves_export_to_tensorboard_with_our_tags_and_units(tmp_path, capsys):
    from common.run_logs import find_runs
    from scripts import paper_tables

    logs = ROOT / "paper" / "logs" / "cifar10"
    assert paper_tables.main([str(logs), "--export-tb", str(tmp_path / "tb")]) == 0
    run = find_runs([logs])[0]
    exported = read_scalars(tmp_path / "tb" / "if5_T4_e1024_b128_sgd_lr0.1_c256_amp")
    assert [s for s, _ in exported["test/acc1"]][:2] == [1, 2] and len(exported["test/acc1"]) == 1024
    assert exported["test/acc1"] == [(s, pytest.approx(v, rel=1e-6)) for s, v in run.curve]
    assert max(v for _, v in exported["test/acc1"]) == pytest.approx(95.32, abs=0.005)  # percent, as ours
    capsys.readouterr()
    assert paper_tables.main([str(logs), "--export-tb", str(tmp_path / "tb")]) == 2  # never into an export
    assert "is not an empty folder" in capsys.readouterr().err
