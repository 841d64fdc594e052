"""scripts/benchmark_psn.py runs end to end (a smoke run on CPU; the real numbers need a GPU)."""
import json

from conftest import run_script


def test_benchmark_tables_report_the_numbers_it_measured(tmp_path):
    """A CPU run (the real numbers need a GPU): the Markdown tables print the very numbers of the JSON, and each
    ratio is the two timings it compares (SpikingJelly / ours per neuron; ours / SpikingJelly per network)."""
    out = run_script("scripts/benchmark_psn.py", "--quick", "--device", "cpu", "--json", tmp_path / "b.json")
    data = json.loads((tmp_path / "b.json").read_text())
    assert [r["T"] for r in data["neurons"]] == [4, 8] and len(data["networks"]) == 2
    rows = {}
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("dtype", "network", "---"):
            rows[(cells[0], cells[1]) if cells[0] in ("float32", "float16", "bfloat16") else cells[0]] = cells
    for r in data["neurons"]:
        cells = rows[(r["dtype"], str(r["T"]))]
        assert cells[2] == f"{r['floor_ms']:.3f}" and r["floor_ms"] > 0
        for i, name in enumerate(("PSN", "MaskedPSN", "SlidingPSN")):
            ours, theirs = r[f"{name}_ours_ms"], r[f"{name}_sj_ms"]
            assert cells[3 + 3 * i].startswith(f"{ours:.3f} (") and cells[4 + 3 * i].startswith(f"{theirs:.3f} (")
            assert cells[5 + 3 * i] == f"{theirs / ours:.1f}x"
    for r in data["networks"]:
        cells = rows[r["network"]]
        assert cells[1] == f"{r['ours_images_per_s']:.0f}" and cells[2] == f"{r['sj_images_per_s']:.0f}"
        assert cells[3] == f"{r['ours_images_per_s'] / r['sj_images_per_s']:.2f}x"
        assert r["free_images_per_s"] > 0 and cells[6] == f"{r['free_images_per_s']:.0f}"


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
