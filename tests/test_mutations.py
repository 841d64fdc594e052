"""The mutation check: realistic faults, one per mechanism that matters, each made in a temporary copy of the
project and run against the tests that should see it. Every fault must make those tests fail.

    python -m pytest -q -m slow tests/test_mutations.py              # all (about 10 minutes on 2 cores)
    python -m pytest -q -m slow tests/test_mutations.py -k lambda    # one mechanism

A fault is the exact text it replaces in one file (`nth` picks one of several identical lines), so a
refactor that moves or rewrites that code fails this module's check that the text is still there: move
the fault with the code, and keep it realistic (what a colleague's slip would be, not a deletion of the
file). The copy imports itself (PYTHONPATH), never this checkout.
"""
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Fault:
    mechanism: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments: files, node ids, -k expressions
    nth: int | None = None  # which occurrence of `old` (0: the first) when it appears more than once

    @property
    def id(self) -> str:
        return self.mechanism.split(":")[0].replace(" ", "-")


FAULTS = [
    # Losses
    Fault("label smoothing: halved in the CIFAR loss", "common/losses.py",
          "partial(F.cross_entropy, label_smoothing=label_smoothing)",
          "partial(F.cross_entropy, label_smoothing=label_smoothing / 2)", ("tests/test_losses.py",)),
    Fault("label smoothing default: not the paper's 0.1", "common/cli.py",
          '"--label-smoothing", type=float, default=0.1,', '"--label-smoothing", type=float, default=0.05,',
          ("tests/test_losses.py",)),
    Fault("TET mse weight: added without taking it from the cross-entropy", "common/losses.py",
          "return (1.0 - mse_weight) * ce + mse_weight", "return ce + mse_weight", ("tests/test_losses.py",)),
    Fault("TET mean over steps: summed", "common/losses.py",
          "for step in steps]).mean()", "for step in steps]).sum()", ("tests/test_losses.py",)),
    # Schedules
    Fault("cosine schedule: period off by one", "common/training.py", "CosineAnnealingLR(optimizer, T_max=period)",
          "CosineAnnealingLR(optimizer, T_max=period + 1)",
          ("tests/test_cifar10.py::test_two_epoch_run_writes_args_events_checkpoints_and_json",)),
    Fault("lambda schedule: over epochs, not epochs - 1", "common/neurons.py",
          "min(8.0 * epoch / (epochs - 1), 1.0)", "min(8.0 * epoch / epochs, 1.0)",
          ("tests/test_sequential_cifar.py::test_lambda_schedule_is_the_originals_and_ends_at_one",)),
    # Kernels
    Fault("fused forward: the weight read transposed", "common/kernels.py",
          "w_j = tl.load(w_ptr + rows * T + j,", "w_j = tl.load(w_ptr + j * T + rows,",
          ("tests/test_kernels.py", "-k", "fp32 and psn"), nth=0),  # the short-sequence kernel
    Fault("fused backward: surrogate slope without the 1/2", "common/kernels.py",
          "gh = g * (half_alpha / (1.0 + ah * ah))", "gh = g * (alpha / (1.0 + ah * ah))",
          ("tests/test_kernels.py", "-k", "fp32 and psn"), nth=0),  # the short-sequence kernel
    Fault("fused backward: the kernels given ATan's default alpha", "common/neurons.py",
          "_kernels().fire(x_seq, weight, bias, surrogate_function.alpha)", "_kernels().fire(x_seq, weight, bias, 2.0)",
          ("tests/test_kernels.py", "-k", "own_alpha")),
    Fault("fused backward: bias gradient from the first program's partial sum only", "common/kernels.py",
          "    sums = part.sum(0)", "    sums = part[0]",
          ("tests/test_kernels.py", "-k", "fp32")),
    Fault("split backward: every column chunk's partial sums written over the first's", "common/kernels.py",
          "gxs[:, s:], part[i * per_chunk:], min(chunk, M - s))", "gxs[:, s:], part, min(chunk, M - s))",
          ("tests/test_kernels.py", "-k", "chunks")),
    Fault("split backward: gh for the whole input instead of a bounded chunk", "common/kernels.py",
          "    chunk = min(chunk, M)\n", "    chunk = M\n",
          ("tests/test_benchmark.py", "-k", "peak_memory")),
    Fault("launch overrides: a setting applied beyond its band of T", "common/kernels.py",
          '_overrides.get(f"{direction}:{t_range(T)}", {})', 'next(iter(_overrides.values()), {})',
          ("tests/test_gpu_check.py", "-k", "sweep_choice")),
    # The GPU check
    Fault("GPU check goals: the SpikingJelly target taken as 4x", "scripts/gpu_check.py",
          "all(min(v) >= 5 for v in sj.values())", "all(min(v) >= 4 for v in sj.values())",
          ("tests/test_gpu_check.py", "-k", "verdicts")),
    Fault("GPU check correctness: spike mismatches counted inside the rounding band only", "common/kernel_check.py",
          "outside += int((wrong & (h.abs() > band)).sum())", "outside += int((wrong & (h.abs() <= band)).sum())",
          ("tests/test_gpu_check.py", "-k", "wrong_kernel")),
    # The original repository's layouts
    Fault("original layout: masks swapped", "common/neuron_registry.py",
          'sd[f"{p}{buffer}"] = sd.pop(f"{p}fc.{buffer}")',
          'sd[f"{p}{\'mask1\' if buffer == \'mask0\' else \'mask0\'}"] = sd.pop(f"{p}fc.{buffer}")',
          ("tests/test_engine.py", "-k", "original_neuron_layouts")),
    Fault("original layout: the sliding PSN's threshold negated", "common/neuron_registry.py",
          'sd[f"{p}bias"] = sd.pop(f"{p}threshold")', 'sd[f"{p}bias"] = -sd.pop(f"{p}threshold")',
          ("tests/test_engine.py", "-k", "original_neuron_layouts")),
    Fault("original layout: a finished masked PSN at lambda 0", "common/neuron_registry.py",
          'sd[f"{p}_lambda_"] = torch.tensor(1.0)', 'sd[f"{p}_lambda_"] = torch.tensor(0.0)',
          ("tests/test_engine.py", "-k", "original_neuron_layouts")),
    # Checkpoints: digests, validation, positions
    Fault("digest: a mismatch let through", "common/checkpoint.py",
          'if not isinstance(raw["digest"], str) or digest != raw["digest"]:',
          'if not isinstance(raw["digest"], str):',
          ("tests/test_reliability.py::test_a_flipped_bit_in_a_weight_is_caught_by_the_digest",)),
    Fault("validation: no upper bound on a checkpoint's epoch", "common/run_state.py",
          "return is_int(value) and -1 <= value < MAX_EPOCH", "return is_int(value) and -1 <= value",
          ("tests/test_run_state.py", "tests/test_checkpoint_bounds.py")),
    Fault("resume position: the file's epoch without its -1", "common/run_state.py",
          "to_file=lambda e: e - 1", "to_file=lambda e: e", ("tests/test_run_state.py",)),
    Fault("resume position: a mid-epoch resume skips one step too few", "common/fit.py",
          "sampler.skip(state.step * loaders.step_samples", "sampler.skip((state.step - 1) * loaders.step_samples",
          ("tests/test_cifar10.py::test_signals_stop_cleanly_and_a_mid_epoch_checkpoint_resumes_bit_identically",)),
    # Processes and accumulation
    Fault("DDP reduction: metrics reduced with MAX", "common/distributed.py",
          "dist.all_reduce(tensor, op=dist.ReduceOp.SUM)", "dist.all_reduce(tensor, op=dist.ReduceOp.MAX)",
          ("tests/test_accumulation.py", "-k", "torchrun")),
    Fault("accumulation: every micro-batch weighted 1/K, a partial last step too", "common/engine.py",
          "t.backward(loss * (n / step_samples), last_of_step)", "t.backward(loss / accum, last_of_step)",
          ("tests/test_accumulation.py", "-k", "partial")),
    Fault("accumulation: an optimizer step after every micro-batch", "common/engine.py",
          "last_of_step = i % accum == accum - 1 or i == micro_batches - 1", "last_of_step = True",
          ("tests/test_accumulation.py", "-k", "k_micro")),
    Fault("recipe on other GPU counts: the global batch per process, not the authors' per-BN batch",
          "common/experiments.py", "return Launch(row, nodes, gpus, row.bn_batch, row.gpus // processes)",
          "return Launch(row, nodes, gpus, row.global_batch // processes, 1)",
          ("tests/test_reproduce.py", "-k", "every_row_keeps")),
    # SLURM chains
    Fault("SLURM requeue: an earlier job's stop taken for this one's", "scripts/reproduce.py",
          "if os.stat(run_dir / runlog.SUMMARY).st_mtime < since:", "if False:",
          ("tests/test_slurm.py", "-k", "crash")),
    Fault("SLURM requeue: one more than --max-requeues", "scripts/reproduce.py",
          'stopped) if [ "$segment" -le {max_requeues} ]', 'stopped) if [ "$segment" -le $(({max_requeues} + 1)) ]',
          ("tests/test_slurm.py", "-k", "crash")),
    # The downloader
    Fault("downloader: a listed name with a '/' accepted", "common/download.py",
          'name.startswith(".") or "/" in name or', 'name.startswith(".") or',
          ("tests/test_download_hostile.py", "-k", "not_a_plain_file_name")),
    Fault("downloader: a body longer than listed written", "common/download.py",
          'if written + len(chunk) > entry["size"]:', "if False:",
          ("tests/test_download_hostile.py", "-k", "longer_than_listed")),
    # Run directories and settings
    Fault("no-rewind rule: an older checkpoint continues in its run directory", "common/run_dir.py",
          "if newer.state.position > ckpt.state.position:", "if False:",
          ("tests/test_lifecycle.py::test_resume_never_rewinds_and_forks_on_request",)),
    Fault("settings adoption: a flag contradicting the checkpoint's model accepted", "common/settings.py",
          "if flag.kind == MODEL and value != settings[key]:", "if False:",
          ("tests/test_recipes.py::test_explicit_flags_win_unless_they_contradict_the_model",)),
    Fault("settings adoption: a recorded recipe setting not taken on resume", "common/settings.py",
          "        if value != settings[key]:\n            changes[key] = value", "        pass",
          ("tests/test_run_state.py", "tests/test_recipes.py")),
    # Provenance
    Fault("provenance: git runs the user's configured programs", "common/provenance.py",
          'proc = subprocess.Popen(["git", "-C", str(ROOT), *_GIT_SAFE, *args]',
          'proc = subprocess.Popen(["git", "-C", str(ROOT), *args]',
          ("tests/test_provenance.py::test_git_runs_none_of_the_users_programs",)),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """The project's files (tracked, and new ones git does not ignore), copied once."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    copy = tmp_path_factory.mktemp("pristine") / "project"
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)  # provenance reads a git tree
    subprocess.run(["git", "add", "-A"], cwd=copy, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], cwd=copy,
                   check=True)
    return copy


def test_there_are_enough_faults_one_per_mechanism():
    assert len(FAULTS) >= 25 and len({f.mechanism for f in FAULTS}) == len(FAULTS)


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_each_fault_is_caught(fault, pristine, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(pristine, project, symlinks=True)
    target = project / fault.path
    text = target.read_text()
    count = text.count(fault.old)
    nth = 0 if fault.nth is None else fault.nth
    assert count > nth and (fault.nth is not None or count == 1), (
        f"{fault.path} holds {count} copies of the text this fault replaces: the code moved, so move the fault "
        "with it (or pick one with nth)")
    at = -1
    for _ in range(nth + 1):
        at = text.index(fault.old, at + 1)
    target.write_text(text[:at] + fault.new + text[at + len(fault.old):])
    env = dict(os.environ, PYTHONPATH=str(project), PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider",
                             "-m", "not slow or slow", *fault.tests], cwd=project, env=env, capture_output=True,
                            text=True, timeout=900)
    tail = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 1, f"not caught ({fault.mechanism}), exit {result.returncode}:\n{tail}"
    assert " failed" in result.stdout, tail
