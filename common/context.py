"""What one invocation runs with, fixed before the run starts: settings, processes, device, precision."""
from dataclasses import dataclass

import torch

from . import distributed as D
from .errors import UserError
from .settings import Settings
from .stops import StopRequests


@dataclass(frozen=True)
class Context:
    settings: Settings
    env: D.DistEnv
    device: torch.device
    amp_dtype: torch.dtype | None  # the training precision under --amp; None: fp32
    stops: StopRequests  # SIGTERM / SIGUSR1 requests, looked at between steps

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    @property
    def is_main(self) -> bool:
        return self.env.is_main


def make_context(settings: Settings, env: D.DistEnv, device: torch.device, stops: StopRequests) -> Context:
    """The context of `settings` on this process's device, with the GPU's determinism set as asked."""
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {settings.device} was asked for, but this machine has no CUDA GPU; use --device cpu.")
    amp_dtype = None
    if settings.amp:
        amp_dtype = getattr(torch, settings.amp_dtype) if settings.amp_dtype else (
            torch.float16 if device.type == "cuda" else torch.bfloat16)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not settings.deterministic
        torch.backends.cudnn.deterministic = settings.deterministic
    if settings.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return Context(settings, env, device, amp_dtype, stops)
