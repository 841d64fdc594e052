"""What one experiment is: a short, named set of hooks, each a function of the resolved settings.

A task's train.py builds one `Task` and hands it, with the command line, to `common.run.run`.
The engine never looks at a task's own flags; it calls these hooks.
"""
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cli import RecipeParser
from .data import DataBundle
from .settings import Settings, from_command_line

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (output, target) -> scalar


def _plain_cross_entropy(settings: Settings) -> LossFn:
    return F.cross_entropy


def _same(output: torch.Tensor) -> torch.Tensor:
    return output


@dataclass(frozen=True)
class Task:
    name: str
    parser: Callable[[], RecipeParser]  # the task's flags, with the paper's defaults
    build_data: Callable[[Settings], DataBundle]
    build_model: Callable[[Settings, int], nn.Module]  # (settings, number of classes)
    run_name: Callable[[Settings], str]  # the run directory's name, from the main settings
    train_loss: Callable[[Settings], LossFn]
    test_loss: Callable[[Settings], LossFn] = _plain_cross_entropy
    # Model output -> class scores [N, classes] for accuracy (e.g. the mean over time steps).
    scores: Callable[[torch.Tensor], torch.Tensor] = _same
    # True when --batch-size is the total over all processes (CIFAR10-DVS), not per process.
    global_batch: bool = False
    # Called on a new run's fresh model before training (ImageNet's --load of ANN weights): (model, settings, report).
    init_weights: Callable[[nn.Module, Settings, bool], None] | None = None
    # Called once the settings are resolved, to refuse combinations the task cannot run (raise UserError).
    check_settings: Callable[[Settings], None] | None = None
    # Called with --test-only once the weights are loaded, to refuse what cannot be evaluated.
    check_loaded: Callable[[nn.Module, Settings], None] | None = None
    # The MODEL settings an original-layout state dict determines through its tensors ({'channels': 256, 'T': 4}).
    infer_settings: Callable[[dict], dict] | None = None
    # Settings another program's checkpoint cannot tell through its tensors, with the values the paper used
    # ({'T': (4, 8, 10)}): given on the command line or by the downloader's manifest, or refused; never guessed.
    file_cannot_tell: Mapping = field(default_factory=dict)
    # Values of settings that our checkpoints written before the setting existed were trained with.
    legacy_settings: Mapping = field(default_factory=dict)
    # How --test-only evaluates when the task's settings change it (sequential CIFAR's --streaming): a phrase for
    # its opening line and its JSON line's "evaluation", or None for the usual whole-sequence pass.
    evaluation_mode: Callable[[Settings], str | None] | None = None
    # A checkpoint's recorded settings from before a change of meaning, rewritten: (recorded, state dict) -> recorded.
    upgrade_recorded: Callable[[dict, dict], dict] | None = None

    def parse(self, argv=None) -> Settings:
        """The command line's settings (before any checkpoint is read)."""
        return from_command_line(self.parser(), argv)
