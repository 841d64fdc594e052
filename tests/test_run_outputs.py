"""What a researcher sees of a run: progress lines off a terminal, metrics.jsonl and summary.json,
--help, spike statistics, and timm's EMA, gradient clipping and warmup, resumable exactly."""
import json
import math
import re

import pytest
import torch
from spikingjelly.activation_based import functional, monitor

from cifar10.models import CIFAR10Net
from common.weights import load_model_weights
from common.neurons import PSN
from conftest import FIXTURES, QUICK, last_json, read_scalars, run_script

SCRIPT = "cifar10/train.py"
PROGRESS = re.compile(r"^epoch (\d+)/(\d+)  step (\d+)/(\d+)  loss [\d.]+  acc1 [\d.]+  \d+ img/s  "
                      r"epoch ETA \d+:\d\d:\d\d  run ETA \d+:\d\d:\d\d$")


def test_progress_lines_metrics_file_and_summary(tmp_path):
    first = run_script(SCRIPT, *QUICK, "--epochs", 2, "--stop-after", 1, "--print-freq", 10, "--spike-stats",
                       "--output-dir", tmp_path, "--run-name", "r")
    lines = [m.groups() for m in map(PROGRESS.match, first.stdout.splitlines()) if m]
    # Steps 1, 2, 4 and 8 before the first --print-freq step (a sign of life within seconds), then every 10th.
    assert [(e, s, n) for e, _, s, n in lines] == [("1", str(k), "44") for k in (1, 2, 4, 8, 10, 20, 30, 40)]
    run = tmp_path / "r"
    # A killed run's half-written last line, and then a resume: no epoch twice, none lost.
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 1, "train/lo')
    second = run_script(SCRIPT, *QUICK, "--epochs", 2, "--resume", run / "checkpoint_latest.pth")
    _check_spike_statistics_in_tensorboard(run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # numbered from 1, as the console counts
    scalars = read_scalars(run)
    assert {"spikes/conv.2", "spikes/synops_per_sample"} <= set(records[0])  # --spike-stats of the first invocation
    for record in records:
        assert set(record) - {"epoch"} <= set(scalars) and "test/acc1" in record
        for tag, value in record.items():
            if tag != "epoch":
                assert dict(scalars[tag])[record["epoch"]] == pytest.approx(value, rel=1e-6), tag
    assert json.loads((run / "summary.json").read_text()) == last_json(second.stdout)


@pytest.mark.parametrize("task", ["cifar10", "sequential_cifar", "cifar10dvs", "imagenet"])
def test_help_gives_every_default(task, monkeypatch):
    import argparse
    import importlib

    from common.cli import HelpFormatter, available_cpus

    module = importlib.import_module(f"{task}.train")
    captured = {}
    original = argparse.ArgumentParser.parse_args

    def capture(self, *a, **k):
        captured["parser"] = self
        return original(self, *a, **k)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    defaults = module.TASK.parse([])
    assert defaults.workers == min(16 if task == "imagenet" else 4, available_cpus())
    parser = captured["parser"]
    text = parser.format_help()
    assert "data and output:" in text and "optimisation:" in text and "task settings:" in text
    formatter = HelpFormatter("x")
    for action in parser._actions:
        if action.option_strings and action.dest != "help" and action.help != argparse.SUPPRESS:
            assert "default" in formatter._get_help_string(action), action.option_strings
    assert "(default: None)" not in text.split("--cos-lr-T")[1][:200]  # named once, not twice


def test_spike_statistics_in_test_only_match_spikingjelly_monitors():
    out = run_script(SCRIPT, "--dataset", "digits", "--workers", "0", "--device", "cpu", "--channels", "32",
                     "--test-only", "--spike-stats", "--resume", FIXTURES / "cifar10_psn_c32_T4.pth")
    record = last_json(out.stdout)
    rates = record["firing_rates"]
    assert list(rates) == ["conv.2", "conv.5", "conv.8", "conv.12", "conv.15", "conv.18", "fc.2"]
    # Independent: SpikingJelly's OutputMonitor over the same test set.
    from common.data import build_cifar

    model = CIFAR10Net(channels=32, T=4)
    load_model_weights(model, FIXTURES / "cifar10_psn_c32_T4.pth")
    model.eval()
    data = build_cifar("digits", "", False)
    mon = monitor.OutputMonitor(model, PSN)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the script ran (OMP_NUM_THREADS=1): the same float sums, the same spikes
    try:
        with torch.no_grad():
            for i in range(0, len(data.test), 128):  # the script's test batches (-b 128)
                batch = torch.stack([data.test[j][0] for j in range(i, min(i + 128, len(data.test)))])
                model(batch)
                functional.reset_net(model)
    finally:
        torch.set_num_threads(threads)
    per_layer = {}
    for k, name in enumerate(mon.monitored_layers):
        records = mon.records[k::len(mon.monitored_layers)]
        per_layer[name] = sum(r.double().sum().item() for r in records) / sum(r.numel() for r in records)
    mon.remove_hooks()
    for name, rate in per_layer.items():
        assert rates[name] == pytest.approx(rate, rel=1e-6, abs=1e-9), name
    assert all(0 < r < 1 for r in rates.values())
    assert record["synops_per_sample"] > 0 and record["macs_per_sample"] > 0
    energy = (0.9 * record["synops_per_sample"] + 4.6 * record["macs_per_sample"]) * 1e-6
    assert record["energy_uJ_per_sample"] == pytest.approx(energy, rel=1e-12)


def _check_spike_statistics_in_tensorboard(run):
    """--spike-stats of the first invocation: TensorBoard's spikes/ scalars and the PSN weight images."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    spikes = [t for t in acc.Tags()["scalars"] if t.startswith("spikes/")]
    assert {"spikes/conv.2", "spikes/fc.2", "spikes/synops_per_sample", "spikes/energy_uJ_per_sample"} <= set(spikes)
    assert sorted(acc.Tags()["images"])[0] == "psn_weight/conv.12" and len(acc.Tags()["images"]) == 7
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 <= record["spikes/conv.2"] <= 1


def _state(path):
    return torch.load(path, weights_only=True)


def test_ema_warmup_and_clipping_resume_exactly(tmp_path):
    flags = [*QUICK, "--epochs", 2, "--model-ema", "--model-ema-decay", "0.99", "--warmup-epochs", 1,
             "--clip-grad", 5.0]
    one_go = last_json(run_script(SCRIPT, *flags, "--output-dir", tmp_path, "--run-name", "a").stdout)
    run_script(SCRIPT, *flags, "--stop-after", 1, "--output-dir", tmp_path, "--run-name", "b")
    resumed = last_json(run_script(SCRIPT, *flags, "--resume", tmp_path / "b" / "checkpoint_latest.pth").stdout)
    a, b = _state(tmp_path / "a" / "checkpoint_latest.pth"), _state(tmp_path / "b" / "checkpoint_latest.pth")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["model_ema"][key], b["model_ema"][key]), key
    assert one_go["last_test_ema_acc1"] == resumed["last_test_ema_acc1"]
    lr = [v for _, v in read_scalars(tmp_path / "a")["lr"]]
    assert lr[0] == pytest.approx(1e-5) and lr[1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert "test_ema/acc1" in read_scalars(tmp_path / "a")
    assert not any(torch.equal(a["model"][k], a["model_ema"][k]) for k in a["model"] if k.endswith("conv.0.weight"))


def test_gradient_clipping_bounds_every_step(tmp_path):
    from common.rng import seed_epoch

    run_script(SCRIPT, *QUICK, "--epochs", 1, "--clip-grad", 1e-9, "--output-dir", tmp_path, "--run-name", "r")
    seed_epoch(2023, -1)  # the engine builds the model right after this
    init = CIFAR10Net(8, 4).state_dict()
    trained = _state(tmp_path / "r" / "checkpoint_latest.pth")["model"]
    params = {name for name, _ in CIFAR10Net(8, 4).named_parameters()}
    moved = max((trained[k] - init[k]).abs().max().item() for k in params)
    assert moved < 1e-8  # 44 SGD steps of lr 0.1 on gradients of norm <= 1e-9, momentum 0.9
