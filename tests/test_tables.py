"""scripts/paper_tables.py on the authors' logs (shipped in paper/logs) and on our own runs."""
import json

import pytest

from conftest import QUICK, ROOT, last_json, run_script

SCRIPT = "scripts/paper_tables.py"
SEQ_CIFAR10 = {"PSN": 88.45, "masked PSN, order 32": 85.81, "sliding PSN, order 32": 86.70, "LIF": 81.50,
               "PLIF": 83.49, "KLIF": 83.26, "GLIF": 83.66, "LIF without reset": 79.50}


@pytest.fixture(scope="module")
def paper_tables(tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    result = run_script(SCRIPT, ROOT / "paper" / "logs", "--json", out / "runs.json", "--plots", out / "plots")
    return result.stdout, json.loads((out / "runs.json").read_text()), out / "plots"


def test_cifar10_row_reads_the_papers_number(paper_tables):
    text, runs, _ = paper_tables
    cifar10 = [r for r in runs if r["task"] == "cifar10"]
    assert len(cifar10) == 1 and round(cifar10[0]["best"], 2) == 95.32 and cifar10[0]["paper"] == 95.32
    assert "| cifar10 | PSN | 4 | 95.32 | 95.32 | 94.96 |" in text


def test_sequential_cifar10_column_is_the_papers(paper_tables):
    text, _, _ = paper_tables
    section = text.split("## Sequential CIFAR")[1].split("\n## ")[0]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in section.splitlines()
            if line.startswith("| ")}
    for label, paper in SEQ_CIFAR10.items():
        cells = rows[label]
        assert float(cells[1]) == paper and float(cells[2]) == paper, label  # paper, best of the authors' run


def test_every_layout_is_read(paper_tables):
    _, runs, _ = paper_tables
    dvs = {r["T"]: round(r["best"], 2) for r in runs if r["task"] == "cifar10dvs"}
    assert dvs == {4: 82.30, 8: 85.30, 10: 85.90}
    imagenet = {r["dataset"]: round(r["best"], 2) for r in runs if r["task"] == "imagenet"}
    assert imagenet == {"sew_resnet18": 67.63, "sew_resnet34": 70.54}
    seq100 = {(r["neuron"], r["order"]): round(r["best"], 2) for r in runs
              if r["task"] == "sequential_cifar" and r["dataset"] == "cifar100" and r["variant"] == ""}
    assert seq100[("psn", None)] == 62.21 and seq100[("masked_psn", 1)] == 49.30
    assert seq100[("sliding_psn", 2)] == 55.91 and len(seq100) == 6 + 32 * 2  # psn + 5 baselines, masked and sliding P = 1..32
    # Runs resumed by the authors hold two event files; each epoch counts once.
    lif = next(r for r in runs if r["path"].endswith("scf10/lif_e256_b128_sgd_lr0.1_c128_amp"))
    assert [s for s, _ in lif["curve"]] == list(range(1, 257))  # the original logged from 0; read from 1


def test_plots_are_pngs(paper_tables):
    _, _, plots = paper_tables
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == ["cifar10_cifar10_test_acc.png", "cifar10dvs_test_acc.png", "imagenet_test_acc.png",
                    "sequential_cifar_cifar100_test_acc.png", "sequential_cifar_cifar10_test_acc.png",
                    "sequential_cifar_order_sweep.png"]
    assert all((plots / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_our_own_runs_resumed_and_not(tmp_path):
    run_script("cifar10/train.py", *QUICK, "--epochs", 2, "--stop-after", 1, "--output-dir", tmp_path, "--run-name", "a")
    done = last_json(run_script("cifar10/train.py", *QUICK, "--epochs", 2, "--resume",
                                tmp_path / "a" / "checkpoint_latest.pth").stdout)
    seq = last_json(run_script("sequential_cifar/train.py", "--dataset", "digits", "--channels", 4, "-b", 64,
                               "--workers", 0, "--device", "cpu", "--epochs", 1, "--neuron", "sliding_psn", "-P", 4,
                               "--output-dir", tmp_path, "--run-name", "s").stdout)
    result = run_script(SCRIPT, tmp_path, "--json", tmp_path / "runs.json")
    runs = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads((tmp_path / "runs.json").read_text())}
    assert [s for s, _ in runs["a"]["curve"]] == [1, 2]
    assert runs["a"]["best"] == pytest.approx(done["best_test_acc1"], abs=1e-4) and runs["a"]["dataset"] == "digits"
    assert runs["s"]["task"] == "sequential_cifar" and runs["s"]["neuron"] == "sliding_psn" and runs["s"]["order"] == 4
    assert runs["s"]["final"] == pytest.approx(seq["last_test_acc1"], abs=1e-4)
    assert "## CIFAR-10" in result.stdout and "## Order sweep" in result.stdout  # k = 4: a run of the sweep


def test_no_runs_is_one_clear_error(tmp_path):
    result = run_script(SCRIPT, tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: no TensorBoard run")


def test_original_layouts_under_any_name(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    def write(folder, tag, values, extra=None):
        with SummaryWriter(str(folder)) as w:
            for step, v in enumerate(values):
                w.add_scalar(tag, v, step)
                for t, vs in (extra or {}).items():
                    w.add_scalar(t, vs[step], step)

    write(tmp_path / "dvs_run" / "logs", "test_acc", [10.0, 55.5, 42.0])  # percent
    write(tmp_path / "big_logs" / "te", "test_acc1", [20.0, 61.0], {"test_acc5": [40.0, 83.0]})
    write(tmp_path / "big_logs" / "train", "train_acc1", [15.0, 50.0])
    write(tmp_path / "frac", "test_acc", [0.1, 0.8, 0.75])  # a fraction, as the original CIFAR scripts wrote it
    result = run_script(SCRIPT, tmp_path, "--json", tmp_path / "r.json")
    runs = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads((tmp_path / "r.json").read_text())}
    assert set(runs) == {"dvs_run", "big_logs", "frac"}
    assert runs["dvs_run"]["task"] == "cifar10dvs" and (runs["dvs_run"]["best"], runs["dvs_run"]["final"]) == (55.5, 42.0)
    assert runs["big_logs"]["task"] == "imagenet" and runs["big_logs"]["best"] == 61.0
    assert runs["frac"]["task"] == "cifar10" and runs["frac"]["best"] == pytest.approx(80.0)
    assert "| 83.00 |" in result.stdout  # best top-5


def _events(folder, tag="test_acc", values=(0.1, 0.5, 0.4)):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as w:
        for step, v in enumerate(values):
            w.add_scalar(tag, v, step)


def test_original_run_names_give_neuron_order_and_T(tmp_path):
    for name in ("lif_e256_b128_sgd_lr0.1_c128_amp", "if5pmd8_e256_b128_sgd_lr0.1_c128_amp_P32",
                 "mspsn_e256_b128_adamw_lr0.001_c128_amp_P8", "plif_torch_e256_b128_sgd_lr0.1_c128_amp",
                 "if5_e256_b128_sgd_lr0.1_c128_amp"):
        _events(tmp_path / "scf10" / name)
    _events(tmp_path / "cf10" / "if5_T8_e1024_b128_sgd_lr0.1_c256_amp")
    run_script(SCRIPT, tmp_path, "--json", tmp_path / "r.json")
    runs = {r["path"].rsplit("/", 1)[-1].split("_e")[0]: r for r in json.loads((tmp_path / "r.json").read_text())}
    got = {k: (r["task"], r["neuron"], r["order"], r["variant"]) for k, r in runs.items() if k != "if5_T8"}
    assert got == {"lif": ("sequential_cifar", "lif", None, ""), "if5pmd8": ("sequential_cifar", "masked_psn", 32, ""),
                   "mspsn": ("sequential_cifar", "sliding_psn", 8, ""),
                   "plif_torch": ("sequential_cifar", "plif", None, "plif_torch"),
                   "if5": ("sequential_cifar", "psn", None, "")}
    assert runs["if5_T8"]["task"] == "cifar10" and runs["if5_T8"]["T"] == 8


def test_two_runs_of_one_row_are_both_shown(tmp_path):
    _events(tmp_path / "scf10" / "lif_e256_b128_sgd_lr0.1_c128_amp", values=(0.3, 0.6))
    _events(tmp_path / "scf10_again" / "lif_e256_b128_sgd_lr0.1_c128_amp", values=(0.2, 0.7))
    text = run_script(SCRIPT, tmp_path).stdout
    lif_rows = [line for line in text.splitlines() if line.startswith("| LIF |")]
    assert len(lif_rows) == 2 and {"60.00", "70.00"} == {row.split(" | ")[2] for row in lif_rows}


@pytest.mark.parametrize("args_txt", [b"", b"\xff\xfe\x00garbage", b"{not json", b"[1, 2]", b'{"task": "cifar10", "T": "abc"}',
                                      b'{"task": 5}', b'{"task": "sequential_cifar", "neuron": "sliding_psn", "order": [1]}', b"hello"])
def test_a_damaged_run_is_skipped_and_the_rest_reported(tmp_path, args_txt, capsys):
    from common import run_logs

    _events(tmp_path / "good" / "lif_e256_b128_sgd_lr0.1_c128_amp")
    bad = tmp_path / "bad"
    _events(bad)
    (bad / "args.txt").write_bytes(args_txt)
    runs = run_logs.find_runs([tmp_path])  # in-process: the command line is tested just below
    assert [r.neuron for r in runs] == ["lif"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 1 and str(bad) in warnings[0]


def test_a_damaged_run_through_the_command_line(tmp_path):
    _events(tmp_path / "good" / "lif_e256_b128_sgd_lr0.1_c128_amp")
    _events(tmp_path / "bad")
    (tmp_path / "bad" / "args.txt").write_bytes(b"\xff\xfe")
    out = run_script(SCRIPT, tmp_path, check=False)
    assert out.returncode == 0 and "| LIF |" in out.stdout and "Traceback" not in out.stderr
    assert "warning: skipped" in out.stderr


def test_damaged_events_are_skipped(tmp_path):
    _events(tmp_path / "good" / "lif_e256_b128_sgd_lr0.1_c128_amp")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "events.out.tfevents.1.host").write_bytes(b"\x00" * 5 + b"\xff" * 100)
    out = run_script(SCRIPT, tmp_path, check=False)
    assert out.returncode == 0 and "| LIF |" in out.stdout and "Traceback" not in out.stderr


@pytest.mark.parametrize("flag", ["--json", "--plots"])
def test_unusable_output_paths_are_one_sentence(tmp_path, flag):
    _events(tmp_path / "runs" / "lif_e256_b128_sgd_lr0.1_c128_amp")
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "below" if flag == "--json" else tmp_path / "file"
    out = run_script(SCRIPT, tmp_path / "runs", flag, target, check=False)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
    assert out.stdout == ""
