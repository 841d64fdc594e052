"""--accum-steps: K accumulated micro-batches make the optimizer step of one batch K times as large.

In float64, against the big batch run by the same engine: the weights (and the EMA, the clipped
gradients, the epoch's metrics) after an epoch are those of one batch of K x the micro-batch, with
a last partial batch, with trailing micro-batches dropped, in one process and under torchrun (gloo);
with BatchNorm, K micro-batches in one process equal K processes each with one (the per-BN batch
the authors' runs had). End to end: a mid-epoch stop lands on a step boundary and resumes exactly.
"""
import json
import signal
import subprocess
import sys

import pytest
import torch

from accumulation_run import SAMPLES, train
from conftest import QUICK, ROOT, last_json, run_script, script_env

ORDER = torch.randperm(SAMPLES, generator=torch.Generator().manual_seed(1)).tolist()


def assert_same(a, b, tol=1e-12):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=0, atol=tol), (x - y).abs().max()


def moved(params) -> float:
    """How far training moved the weights from their initialisation (the test must see a real change)."""
    from accumulation_run import model

    return max((p - q).abs().max().item() for p, q in zip(params, model(False).parameters()))


@pytest.mark.parametrize("flags", [[], ["--clip-grad", "0.05"], ["--model-ema", "--model-ema-decay", "0.5"],
                                   ["--opt", "adamw", "--lr", "0.01"]])
def test_k_micro_batches_give_the_weights_of_one_k_times_batch(flags):
    big, big_ema, big_sums, _ = train(ORDER, 12, 1, False, flags)
    assert moved(big) > 1e-2
    for batch, accum in ((6, 2), (4, 3), (3, 4), (1, 12)):
        params, ema, sums, _ = train(ORDER, batch, accum, False, flags)
        assert_same(params, big)
        if big_ema is not None:
            assert_same(ema, big_ema)
        assert sums.as_list()[:3] == pytest.approx(big_sums.as_list()[:3], rel=1e-12)  # samples, not micro-batches


def test_a_last_partial_step_and_dropped_micro_batches_match_the_big_batch():
    order = ORDER[:46]  # 46 = 3 x 12 + 10: a last batch of 10
    big, *_ = train(order, 12, 1, False, drop_last=False)
    params, _, sums, _ = train(order, 4, 3, False, drop_last=False)  # last step: micro-batches of 4, 4 and 2
    assert_same(params, big)
    assert sums.samples == 46
    dropped, *_ = train(order, 12, 1, False, drop_last=True)  # the last 10 samples left out...
    params, _, sums, _ = train(order, 4, 3, False, drop_last=True)  # ...as the micro-batches that fill no step
    assert_same(params, dropped)
    assert sums.samples == 36
    with pytest.raises(AssertionError):
        assert_same(dropped, big)


def _torchrun(tmp_path, torchrun, batch, accum, bn, orders, *flags):
    out = tmp_path / f"b{batch}_k{accum}_bn{bn}.pt"
    cmd = torchrun + ["--standalone", "--nproc_per_node=2", str(ROOT / "tests" / "accumulation_run.py"), str(out),
                      str(batch), str(accum), str(int(bn)), json.dumps(orders), *flags]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=script_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    return torch.load(out, weights_only=True)


def test_under_torchrun_accumulation_equals_the_big_batch_and_per_bn_batch_is_kept(tmp_path, torchrun):
    ranks = [ORDER[0::2], ORDER[1::2]]  # each process's samples, 24 each
    # Two processes x 2 micro-batches of 3 = the step of two processes x 6 = one process x 12 (rank 0's 6, then 1's).
    ddp = _torchrun(tmp_path, torchrun, 3, 2, False, ranks)
    one = [i for s in range(4) for r in ranks for i in r[6 * s:6 * s + 6]]
    big, _, big_sums, big_metrics = train(one, 12, 1, False)
    assert_same(ddp["params"], big)
    # The training sums over two processes are one process's over the same samples; so is the evaluation.
    assert ddp["sums"][:3] == pytest.approx(big_sums.as_list()[:3], rel=1e-12)
    assert ddp["metrics"]["samples"] == big_metrics["samples"] == SAMPLES
    for key in ("loss", "acc1"):
        assert ddp["metrics"][key] == pytest.approx(big_metrics[key], rel=1e-9)
    # With BatchNorm: two processes with a batch of 4 = one process accumulating 2 micro-batches of 4 (rank 0's,
    # then rank 1's): every BatchNorm normalises over the same 4 samples.
    ddp_bn = _torchrun(tmp_path, torchrun, 4, 1, True, ranks)
    one = [i for s in range(6) for r in ranks for i in r[4 * s:4 * s + 4]]
    accumulated, *_ = train(one, 4, 2, True)
    assert_same(ddp_bn["params"], accumulated)
    merged, *_ = train(one, 8, 1, True)  # one BatchNorm batch of 8 is another recipe
    with pytest.raises(AssertionError):
        assert_same(merged, accumulated, tol=1e-6)


def test_a_stop_mid_epoch_lands_on_a_step_boundary_and_resumes_exactly(tmp_path):
    """End to end through cifar10/train.py: --accum-steps 2 with a stop after some steps; the checkpoint's step
    counts optimizer steps, and the resumed run's weights equal the uninterrupted run's."""
    args = [*QUICK, "-b", "16", "--accum-steps", "2", "--epochs", "1", "--output-dir", tmp_path]
    whole = run_script("cifar10/train.py", *args, "--run-name", "whole")
    assert "one optimizer step: 2 accumulated micro-batches of 16 per process x 1 process(es) = 32 samples" \
        in whole.stdout
    cmd = [sys.executable, str(ROOT / "cifar10/train.py"), *map(str, args), "--run-name", "cut", "--print-freq", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env())
    for line in proc.stdout:
        if line.startswith("epoch 1/1  step 5/44"):  # 1437 samples: 89 micro-batches of 16, 44 steps of 2
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    mid = torch.load(tmp_path / "cut" / "checkpoint_latest.pth", weights_only=True)
    step = mid["step"]
    assert 5 <= step < 44 and mid["step_samples"] == 32 and mid["epoch_sums"][2] == step * 32
    resumed = run_script("cifar10/train.py", *args, "--run-name", "cut", "--resume", "auto")
    assert f"(epoch 1 of 1, step {step + 1})" in resumed.stdout
    a = torch.load(tmp_path / "whole" / "checkpoint_latest.pth", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint_latest.pth", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert last_json(resumed.stdout)["last_test_acc1"] == last_json(whole.stdout)["last_test_acc1"]


def test_an_accumulation_that_does_not_divide_a_total_batch_is_one_sentence(tmp_path):
    out = run_script("cifar10dvs/train.py", "--data-dir", tmp_path, "-b", "6", "--accum-steps", "4", "--device",
                     "cpu", "--output-dir", tmp_path, check=False)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "--batch-size 6" in out.stderr
