"""Clean stops: SIGINT, SIGTERM and SIGUSR1 end a run without a traceback, saying how to resume it.

SIGTERM and SIGUSR1 (what a cluster sends before a job's time is up, e.g. SLURM's
`#SBATCH --signal=USR1@120`) ask the run to stop after its current step: it writes a
mid-epoch checkpoint first, so no part of the epoch is lost. SIGINT (Ctrl-C) stops at once,
keeping the checkpoints already written (saves are atomic). The exit status is 128 + the
signal's number, what a shell reports for a process the signal ended.
"""
import os
import shlex
import signal
import sys

GRACEFUL = (signal.SIGTERM, signal.SIGUSR1)


class RunStopped(Exception):
    """A run ended by a signal; the message says where it stopped and how to resume it."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Interrupted(BaseException):
    """SIGTERM or SIGUSR1 outside the training loop: raised at once, as Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signal_name(signum))
        self.signum = signum


def ignore_further_signals() -> None:
    """A stop is under way: more Ctrl-C / SIGTERM / SIGUSR1 (a burst of them, say) must not interrupt the
    saving and the goodbye message, nor the interpreter's exit handlers, with a traceback."""
    for sig in (signal.SIGINT, *GRACEFUL):
        try:
            signal.signal(sig, signal.SIG_IGN)
        except ValueError:  # not the main thread
            return


class StopRequests:
    """While active, SIGINT, SIGTERM and SIGUSR1 stop the process cleanly.

    While `deferred` (the training loop), SIGTERM and SIGUSR1 only record the request (`signum`):
    the loop looks at it between steps, where stopping is safe, and writes a mid-epoch
    checkpoint. Elsewhere (building the data, --test-only) they raise Interrupted at once.
    SIGINT raises KeyboardInterrupt at once. Once a stop is under way, further signals are
    ignored until the process ends. Outside the main thread (where Python cannot install
    handlers) signals keep their usual effect.
    """

    def __init__(self):
        self.signum: int | None = None
        self.deferred = False
        self._previous = {}
        self._ending = False

    def __enter__(self) -> "StopRequests":
        for sig, handler in ((signal.SIGINT, self._interrupt), *((s, self._record) for s in GRACEFUL)):
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except ValueError:
                break
        return self

    def __exit__(self, *exc) -> None:
        if not self._ending:  # once stopping, signals stay ignored through the exit
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
        self._previous.clear()

    def ending(self) -> None:
        self._ending = True
        ignore_further_signals()

    def _interrupt(self, signum, frame) -> None:
        self.ending()
        raise KeyboardInterrupt

    def _record(self, signum, frame) -> None:
        self.signum = signum
        if not self.deferred:
            self.ending()
            raise Interrupted(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None


def resume_command(checkpoint) -> str:
    """This process's command line with `--resume CHECKPOINT` in place of any --resume it had."""
    kept, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg in ("--resume", "-resume"):
            skip = True
        elif not arg.startswith(("--resume=", "-resume=")):
            kept.append(arg)
    script = [sys.argv[0], *kept, "--resume", str(checkpoint)]
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if world > 1:
        launcher = f"torchrun --nproc_per_node={local}" if local == world else "torchrun <this job's launcher options>"
        return f"{launcher} {shlex.join(script)}"
    return shlex.join([sys.executable, *script])
