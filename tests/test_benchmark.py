"""scripts/benchmark_psn.py runs end to end (a smoke run on CPU; the real numbers need a GPU)."""
import json

from conftest import run_script


def test_benchmark_smoke_run_writes_tables_and_json(tmp_path):
    out = run_script("scripts/benchmark_psn.py", "--quick", "--device", "cpu", "--json", tmp_path / "b.json")
    assert "### Neurons" in out.stdout and "### Networks" in out.stdout
    data = json.loads((tmp_path / "b.json").read_text())
    assert [r["T"] for r in data["neurons"]] == [4, 8]
    for row in data["neurons"]:
        for name in ("PSN", "MaskedPSN", "SlidingPSN"):
            assert row[f"{name}_ours_ms"] > 0 and row[f"{name}_sj_ms"] > 0
        assert row["floor_ms"] > 0 and row["LIF_sj_ms"] > 0
    assert len(data["networks"]) == 2
    assert all(r["ours_images_per_s"] > 0 and r["free_images_per_s"] > 0 for r in data["networks"])


def test_swapping_in_spikingjelly_keeps_the_function():
    import torch
    from spikingjelly.activation_based import functional

    from cifar10.models import CIFAR10Net
    from scripts.benchmark_psn import swap_neurons

    torch.manual_seed(0)
    net = CIFAR10Net(8, 4).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ours = net(x)
        functional.reset_net(net)
        theirs = swap_neurons(net, "sj").double()(x)
    assert torch.equal(ours, theirs)
