"""The objects one invocation trains with, owned by one object and whole when built: the model (and the
DDP / compiled wrapper the steps run), the optimizer, the AMP gradient scaler, timm's EMA, and the
learning-rate schedule. `Training.state` is what a checkpoint keeps of them."""
import contextlib
import sys
import warnings

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed as D
from .checkpoint import Checkpoint
from .checkpoint_checks import optimizer_fit_problem
from .context import Context
from .errors import UserError
from .settings import Settings
from .weights import load_state_dict_checked


class Schedule:
    """The learning rate per epoch: torch's CosineAnnealingLR (the paper's), or with --warmup-epochs
    timm's CosineLRScheduler, whose rate is a function of the epoch (set at each epoch's start).

    A resumed run replays the schedule from --lr up to its epoch rather than loading the
    saved one: the learning rate is a function of the epoch and this command's settings,
    so a run stopped after any epoch (`--stop-after`, or a first `--epochs 1`) continues
    exactly as the uninterrupted run would have.
    """

    def __init__(self, optimizer, settings: Settings, start_epoch: int):
        for group in optimizer.param_groups:
            group["lr"] = settings.lr
            group.pop("initial_lr", None)
        period = settings.cos_lr_T or settings.epochs
        self.timm = None
        if settings.warmup_epochs:
            from timm.scheduler import CosineLRScheduler  # timm takes seconds to import: only when used

            self.timm = CosineLRScheduler(optimizer, t_initial=period, warmup_t=settings.warmup_epochs,
                                          warmup_lr_init=settings.warmup_lr, t_in_epochs=True)
            return
        self.torch = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=period)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # stepping the schedule without optimizer steps is the point here
            for _ in range(start_epoch):
                self.torch.step()

    def at_epoch_start(self, epoch: int) -> None:
        if self.timm is not None:
            self.timm.step(epoch)

    def after_epoch(self) -> None:
        if self.timm is None:
            self.torch.step()


def build_optimizer(settings: Settings, model: nn.Module) -> torch.optim.Optimizer:
    if settings.opt == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                               weight_decay=settings.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


class Training:
    def __init__(self, model: nn.Module, ctx: Context, start_epoch: int, ckpt: Checkpoint | None = None):
        """Everything training needs around `model` (weights already loaded), restored from `ckpt` where it
        continues a run: optimizer state and AMP scaler, then the EMA (of the loaded weights), the schedule
        at `start_epoch`, and the wrapper the steps run."""
        settings = ctx.settings
        self.model = model  # evaluated and saved
        self.ctx = ctx
        self.optimizer = build_optimizer(settings, model)
        self.scaler = torch.amp.GradScaler(ctx.device.type) if ctx.amp_dtype == torch.float16 else None
        if ckpt is not None and start_epoch < settings.epochs:
            self._restore(ckpt)
        self.ema = self._ema(ckpt) if settings.model_ema else None
        self.ddp = None  # the DDP wrapper, whose no_sync() an accumulating micro-batch takes
        self.train_model = self._wrapped(model)  # what the steps run: DDP around the model, maybe compiled
        self.schedule = Schedule(self.optimizer, settings, start_epoch)

    def backward(self, loss: torch.Tensor, last_of_step: bool = True) -> None:
        """Add `loss`'s gradients to those of the optimizer step's earlier micro-batches. Under DDP only the
        step's last micro-batch reduces over processes (`no_sync` before it): one all-reduce per step."""
        scaled = self.scaler.scale(loss) if self.scaler is not None else loss
        with contextlib.nullcontext() if last_of_step or self.ddp is None else self.ddp.no_sync():
            scaled.backward()

    def step(self) -> None:
        """One optimizer step on the accumulated gradients: unscaled and clipped first where asked, then zeroed."""
        clip = self.ctx.settings.clip_grad
        if clip is not None:
            from timm.utils import dispatch_clip_grad  # timm takes seconds to import: only when used
        if self.scaler is not None:
            if clip is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
                dispatch_clip_grad(self.model.parameters(), clip, mode="norm")
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip is not None:
                dispatch_clip_grad(self.model.parameters(), clip, mode="norm")
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def update_ema(self) -> None:
        if self.ema is not None:
            self.ema.update(self.model)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state(self) -> dict:
        """What a checkpoint keeps of the training objects besides the model's weights, by the Checkpoint's field
        names (the schedule is a function of the epoch)."""
        return {"optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "model_ema": self.ema.module.state_dict() if self.ema is not None else None}

    def _restore(self, ckpt: Checkpoint) -> None:
        """Optimizer state (momenta) and AMP scaler of a checkpoint, each checked against this run's first.

        Our own checkpoint that does not fit is refused; another program's file gives its weights and
        epoch, and an optimizer state that does not fit is dropped with a warning."""
        if ckpt.optimizer:
            problem = optimizer_fit_problem(self.optimizer, ckpt.optimizer, self.ctx.settings.opt)
            if problem is None:
                try:
                    self.optimizer.load_state_dict(ckpt.optimizer)
                except (ValueError, KeyError, RuntimeError, TypeError, AttributeError, IndexError) as e:
                    problem = str(e).splitlines()[0] if str(e) else type(e).__name__
            if problem is not None:
                message = (f"the optimizer state in {ckpt.path} does not fit this run's optimizer "
                           f"(--opt {self.ctx.settings.opt}): {problem}")
                if ckpt.layout == "ours":
                    raise UserError(message[0].upper() + message[1:] + ".")
                self.optimizer = build_optimizer(self.ctx.settings, self.model)  # nothing half-loaded
                if self.ctx.is_main:
                    print(f"warning: {message}; continuing with a fresh optimizer.", file=sys.stderr, flush=True)
        if self.scaler is not None and ckpt.scaler:
            expected = set(self.scaler.state_dict())
            if set(ckpt.scaler) != expected:
                raise UserError(f"Checkpoint {ckpt.path}: its AMP scaler state has the fields {sorted(ckpt.scaler)}, "
                                f"not {sorted(expected)}.")
            self.scaler.load_state_dict(ckpt.scaler)

    def _ema(self, ckpt: Checkpoint | None):
        from timm.utils import ModelEmaV3  # timm takes seconds to import: only when used

        ema = ModelEmaV3(self.model, decay=self.ctx.settings.model_ema_decay)
        if ckpt is not None and ckpt.layout == "ours" and ckpt.model_ema is not None:
            load_state_dict_checked(ema.module, ckpt.model_ema, ckpt.path, "model_ema")
        return ema

    def _wrapped(self, model: nn.Module) -> nn.Module:
        settings, ctx = self.ctx.settings, self.ctx
        if settings.sync_bn and ctx.env.enabled:
            model = D.convert_sync_batchnorm(model)
        if ctx.env.enabled:
            model = self.ddp = DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda"
                                                       else None)
        if settings.compile:
            model = torch.compile(model)
        return model
