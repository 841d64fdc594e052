"""What a person watching a run sees: a tqdm bar per epoch on a terminal (rank 0 only), and off a
terminal (clusters, nohup, a pipe) a progress line with ETAs every --print-freq steps, plus one
line per epoch."""
import sys

from tqdm import tqdm

from .distributed import DistEnv


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, env: DistEnv, epochs: int):
        self.env, self.epochs = env, epochs
        self.tty = sys.stdout.isatty()
        # Epochs this invocation trains after the current one, and the last evaluation's duration:
        # what the run's ETA adds to the current epoch's.
        self.epochs_after = 0
        self.eval_time_s = 0.0

    def bar(self, iterable, total: int, desc: str):
        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                    disable=not (self.env.is_main and self.tty))

    def step(self, epoch: int, step: int, total: int, loss: float, acc1: float, seen: int, done: int,
             elapsed: float) -> None:
        """The heartbeat line (rank 0, off a terminal): `seen` samples in `elapsed` seconds over the steps
        after `done` (those this invocation ran)."""
        if not self.env.is_main or self.tty:
            return
        per_step = elapsed / max(step - done, 1)
        epoch_eta = per_step * (total - step)
        run_eta = epoch_eta + self.eval_time_s + self.epochs_after * (per_step * total + self.eval_time_s)
        print(f"epoch {epoch + 1}/{self.epochs}  step {step}/{total}  loss {loss:.4f}  acc1 {acc1:.2f}  "
              f"{seen * self.env.world_size / elapsed:.0f} img/s  epoch ETA {clock(epoch_eta)}  "
              f"run ETA {clock(run_eta)}", flush=True)

    def epoch(self, epoch: int, train, test: dict, best: float) -> None:
        if self.env.is_main:
            print(f"epoch {epoch + 1}/{self.epochs}  train loss {train.loss:.4f} acc1 {train.acc1:.2f}  "
                  f"test loss {test['loss']:.4f} acc1 {test['acc1']:.2f} (best {best:.2f})  "
                  f"{train.images_per_s:.0f} img/s  {train.epoch_time_s:.1f} s", flush=True)
