"""sequential_cifar/: the original fixtures, every neuron, the lambda schedule, streaming inference."""
import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from common.baselines import LIFNoReset
from common.weights import load_model_weights
from common.neuron_registry import NEURON_NAMES, create_neuron
from common.neurons import MaskedPSN
from conftest import FIXTURES, last_json, read_scalars, run_script
from sequential_cifar import train as seq_train
from sequential_cifar.models import SequentialCIFARNet

SCRIPT = "sequential_cifar/train.py"
QUICK = ["--dataset", "digits", "--channels", "4", "-b", "64", "--workers", "0", "--device", "cpu", "-P", "4"]


@pytest.mark.parametrize("name,kwargs", [
    ("seqcifar10_psn_c16", dict(neuron="psn")),
    ("seqcifar100_masked_psn_P8_c16", dict(neuron="masked_psn", order=8, num_classes=100)),
    ("seqcifar10_sliding_psn_P8_c16", dict(neuron="sliding_psn", order=8)),
])
def test_original_sequential_checkpoints_give_the_expected_outputs_in_float64(name, kwargs):
    model = SequentialCIFARNet(channels=16, **kwargs)
    load_model_weights(model, FIXTURES / f"{name}.pth")
    io = torch.load(FIXTURES / f"{name}.io.pt")
    model = model.double().eval()
    with torch.no_grad():
        y = model(io["x"])
    assert y.shape == io["y"].shape
    assert (y - io["y"]).abs().max() < 1e-9
    if kwargs["neuron"] != "psn":  # the same weights, one column at a time
        model.streaming = True
        assert (model(io["x"]) - io["y"]).abs().max() < 1e-9


def test_lif_without_reset_matches_the_recurrence():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 5, dtype=torch.float64, requires_grad=True)
    spikes = LIFNoReset(tau=2.0).double()(x)
    h, expected = torch.zeros(3, 5, dtype=torch.float64), []
    for t in range(16):
        h = 0.5 * h + x[t].detach() / 2.0  # h[t] = (1 - 1/tau) h[t-1] + x[t] / tau, never reset
        expected.append((h >= 1.0).double())
    assert torch.equal(spikes.detach(), torch.stack(expected))
    assert 0 < spikes.sum() < spikes.numel()
    spikes.sum().backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("neuron", NEURON_NAMES)
def test_every_neuron_trains_a_step(neuron):
    torch.manual_seed(1)
    net = SequentialCIFARNet(channels=8, num_classes=10, neuron=neuron, order=4)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    functional.reset_net(net)
    assert torch.isfinite(loss)
    changed = [not torch.equal(a, p) for a, p in zip(before, net.parameters())]
    assert all(changed[:1]) and sum(changed) > len(changed) // 2


def test_neuron_factory_configures_the_baselines_as_the_paper():
    lif, plif, klif = (create_neuron(n, 32) for n in ("lif", "plif", "klif"))
    assert lif.tau == 2.0 and lif.v_reset is None and lif.detach_reset
    assert plif.v_reset is None and plif.detach_reset and plif.w.sigmoid().item() == pytest.approx(0.5)
    assert klif.v_reset is None and not klif.detach_reset
    glif = create_neuron("glif", 32, channels=12)
    assert glif.alpha.shape == (12,) and glif.conduct.shape == (32, 12)
    assert create_neuron("mspsn", 32, order=4).k == 4  # original names work
    assert isinstance(create_neuron("if5pmd8", 32, order=4), MaskedPSN)
    with pytest.raises(ValueError, match="Unknown neuron"):
        create_neuron("izhikevich", 32)


def test_lambda_schedule_is_the_originals_and_ends_at_one():
    epochs = 256
    values = [MaskedPSN.lambda_schedule(e, epochs) for e in range(epochs)]
    assert values[0] == 0.0 and values[-1] == 1.0
    assert values[16] == pytest.approx(8 * 16 / 255)
    assert values == sorted(values) and max(values) == 1.0
    assert MaskedPSN.lambda_schedule(0, 1) == 1.0


@pytest.mark.parametrize("neuron", ["masked_psn", "sliding_psn", "lif"])
def test_streaming_predictions_equal_multi_step(neuron):
    torch.manual_seed(2)
    net = SequentialCIFARNet(channels=8, neuron=neuron, order=5).double().eval()
    for m in net.modules():
        if isinstance(m, MaskedPSN):
            m.lambda_ = 1.0
    with torch.no_grad():
        for m in net.modules():  # livelier spikes than at initialisation
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(0.0, 1.0)
    x = torch.randn(5, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        multi = net(x)
    net.streaming = True
    stream = net(x)
    torch.testing.assert_close(stream, multi, rtol=0, atol=1e-12)
    assert torch.equal(stream.argmax(1), multi.argmax(1))


def test_psn_refuses_to_stream():
    net = SequentialCIFARNet(channels=4, neuron="psn").eval()
    net.streaming = True
    with pytest.raises(ValueError, match="cannot stream"):
        net(torch.randn(1, 3, 32, 32))


# Every neuron trains a step above; the command-line epoch runs the PSN family and GLIF by default
# (about 20 s each), the SpikingJelly baselines with -m slow.
@pytest.mark.parametrize("neuron", [n if n in ("psn", "masked_psn", "sliding_psn", "glif")
                                    else pytest.param(n, marks=pytest.mark.slow) for n in NEURON_NAMES])
def test_one_epoch_digits_run_of_every_neuron(neuron, tmp_path):
    out = run_script(SCRIPT, *QUICK, "--epochs", 1, "--neuron", neuron, "--output-dir", tmp_path)
    record = last_json(out.stdout)
    assert record["epochs_done"] == 1
    scalars = read_scalars(record["run_dir"])
    assert {"train/loss", "test/acc1", "test/acc5", "lr"} <= set(scalars)
    assert (tmp_path / record["run_dir"].rsplit("/", 1)[-1] / "checkpoint_latest.pth").is_file()
    if neuron == "masked_psn":
        assert scalars["neuron/lambda"] == [(1, 1.0)]  # a 1-epoch run is all last epoch


def test_resumed_masked_psn_run_continues_with_the_right_lambda(tmp_path):
    args = [*QUICK, "--neuron", "masked_psn", "--epochs", 3]
    run_script(SCRIPT, *args, "--output-dir", tmp_path / "a", "--run-name", "r")
    run_script(SCRIPT, *args, "--output-dir", tmp_path / "b", "--run-name", "r", "--stop-after", 1)
    first = torch.load(tmp_path / "b/r/checkpoint_latest.pth", weights_only=True)
    assert all(v.item() == 0.0 for k, v in first["model"].items() if k.endswith("_lambda_"))
    run_script(SCRIPT, *args, "--resume", tmp_path / "b/r/checkpoint_latest.pth")

    a = torch.load(tmp_path / "a/r/checkpoint_latest.pth", weights_only=True)
    b = torch.load(tmp_path / "b/r/checkpoint_latest.pth", weights_only=True)
    assert all(v.item() == 1.0 for k, v in b["model"].items() if k.endswith("_lambda_"))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    lambdas = read_scalars(tmp_path / "b/r")["neuron/lambda"]
    assert lambdas == read_scalars(tmp_path / "a/r")["neuron/lambda"] == [(1, 0.0), (2, 1.0), (3, 1.0)]


def test_streaming_test_only_gives_the_multi_step_accuracy(tmp_path):
    out = run_script(SCRIPT, *QUICK, "--neuron", "sliding_psn", "--epochs", 1, "--output-dir", tmp_path,
                     "--run-name", "r")
    ckpt = tmp_path / "r" / "checkpoint_latest.pth"
    multi = last_json(run_script(SCRIPT, *QUICK, "--neuron", "sliding_psn", "--test-only", "--resume", ckpt).stdout)
    streamed = run_script(SCRIPT, *QUICK, "--neuron", "sliding_psn", "--test-only", "--streaming", "--resume", ckpt)
    stream = last_json(streamed.stdout)
    assert stream["test_acc1"] == multi["test_acc1"] == pytest.approx(last_json(out.stdout)["last_test_acc1"])
    # It says how it evaluated, on its opening line and in its JSON; the whole-sequence pass says nothing.
    assert stream["evaluation"].startswith("one column at a time") and "evaluation" not in multi
    assert "; evaluated one column at a time (--streaming" in streamed.stdout
    assert stream["test_loss"] == pytest.approx(multi["test_loss"], rel=1e-5)


def test_the_original_command_parses():
    args = seq_train.TASK.parse("-data-dir D -class-num 100 -amp -opt adamw -lr 0.001 -channels 128 -epochs 256 "
                                "-neu mspsn -P 32".split())
    assert (args.data_dir, args.num_classes, args.amp, args.opt, args.lr, args.channels, args.epochs,
            args.neuron, args.order) == ("D", 100, True, "adamw", 0.001, 128, 256, "sliding_psn", 32)
    d = seq_train.TASK.parse([])
    assert (d.epochs, d.batch_size, d.opt, d.lr, d.channels, d.neuron, d.T) == (256, 128, "sgd", 0.1, 128, "psn", 32)


def test_streaming_refuses_weights_mid_lambda_schedule(tmp_path):
    run_script(SCRIPT, *QUICK, "--neuron", "masked_psn", "--epochs", 9, "--stop-after", 1, "--output-dir", tmp_path,
               "--run-name", "r")  # lambda 0 after the first epoch
    result = run_script(SCRIPT, *QUICK, "--neuron", "masked_psn", "--test-only", "--streaming", "--resume",
                        tmp_path / "r" / "checkpoint_latest.pth", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "lambda = 0" in result.stderr and "cannot stream" in result.stderr


def test_streaming_takes_the_neuron_from_the_checkpoint():
    """No -neu: the original-layout file's tensors say sliding PSN (order 8), which streams; a PSN file is refused."""
    flags = ["--dataset", "digits", "--workers", 0, "--device", "cpu", "--test-only", "--streaming", "--resume"]
    out = run_script(SCRIPT, *flags, FIXTURES / "seqcifar10_sliding_psn_P8_c16.pth")
    assert "neuron=sliding_psn, order=8" in out.stdout and last_json(out.stdout)["samples"] == 360
    refused = run_script(SCRIPT, *flags, FIXTURES / "seqcifar10_psn_c16.pth", check=False)
    assert refused.returncode == 2 and "--streaming needs a neuron that runs one step at a time" in refused.stderr


@pytest.mark.slow  # 2.5 minutes: python -m pytest -m slow
def test_the_readmes_digits_recipe_learns_what_it_says(tmp_path):
    """sequential_cifar/README.md's digits command with --seed 0, one thread: the best accuracy it states."""
    import re
    import shlex

    from conftest import ROOT

    text = (ROOT / "sequential_cifar" / "README.md").read_text()
    command = re.search(r"## On a laptop.*?```bash\n(.*?)\n```", text, re.S).group(1)
    stated = float(re.search(r"`--seed 0`: (\d+\.\d) %", text).group(1))
    words = shlex.split(command)
    assert words[:2] == ["python", "sequential_cifar/train.py"]
    out = run_script(words[1], *words[2:], "--seed", 0, "--workers", 0, "--device", "cpu", "--output-dir", tmp_path)
    assert last_json(out.stdout)["best_test_acc1"] == pytest.approx(stated, abs=0.05)
