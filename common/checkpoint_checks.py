"""What a checkpoint may hold: every field checked for its type and range before anything uses it.

A checkpoint is input from outside (a download, a disk, another program): nothing in it is
trusted for its type. Each check names what is wrong in a short clause; `read_checkpoint`
joins them into one sentence.
"""
import math

import torch

# Sane bounds for what a checkpoint says about its run: an epoch beyond these is damage (and
# replaying its schedule would never end), not a run.
MAX_EPOCH = 10**6
MAX_STEP = 10**9
MAX_SAMPLES = 2**40
_TORCH_RNG_BYTES = torch.get_rng_state().numel()


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def overlapping_view(t: torch.Tensor) -> bool:
    """A tensor with more elements than the storage it views (stride 0, overlapping strides): a few bytes on
    disk that any elementwise check or copy would blow up (1e10 elements from one float, say)."""
    return t.numel() > t.untyped_storage().nbytes() // max(t.element_size(), 1)


def tensor_problem(t: torch.Tensor) -> str | None:
    """Why a tensor from a file cannot be used as weights or state: sparse, meta, an overlapping view, or not
    finite (checked in that order: nothing is materialised before the view is known to be plain)."""
    if t.layout != torch.strided:
        return f"a {str(t.layout).replace('torch.', '')} tensor"
    if t.is_meta:
        return "a tensor without data (meta)"
    if overlapping_view(t):
        return f"a view of {t.numel()} elements over a storage of fewer (overlapping strides)"
    if (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t).all()):
        return "NaN or infinite values"
    return None


def plain_tree(obj, max_nodes: int, max_depth: int) -> bool:
    """Whether `obj` is JSON-like (dicts with string keys, lists, strings, numbers, booleans, None) with at most
    `max_nodes` nodes and `max_depth` levels, counting a shared object each time it is reached: a small file
    can hold a graph of shared references that unfolds to more nodes than there are atoms."""
    budget, stack = max_nodes, [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        budget -= 1
        if budget < 0 or depth > max_depth:
            return False
        if isinstance(node, dict):
            if not all(isinstance(k, str) for k in node):
                return False
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
        elif not (node is None or isinstance(node, (bool, int, float, str))):
            return False
    return True


def tensors_problem(tensors: dict, what: str) -> str | None:
    for name, t in tensors.items():
        problem = tensor_problem(t)
        if problem is not None:
            return f"{what} {name} holds {problem}"
    return None


def show(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"a dict with keys {[str(k)[:20] for k in list(value)[:5]]}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def field_problems(ckpt) -> list[str]:
    """What is wrong with a checkpoint's weights, optimizer, AMP scaler and EMA, each as a short clause;
    nothing is trusted for its type. (Its run state's fields are checked as they are read:
    `common.run_state`.)"""
    problems = []

    def check(ok: bool, what: str, value) -> None:
        if not ok:
            problems.append(f"{what} (found {show(value)})")

    model_ok = is_state_dict(ckpt.state_dict)
    check(model_ok, "its model must be a state dict (names to tensors)", ckpt.state_dict)
    if model_ok:
        bad = tensors_problem(ckpt.state_dict, "model tensor")
        if bad:
            problems.append(bad)
    if ckpt.layout != "ours":
        return problems  # another program's optimizer state is tried, and dropped with a warning if it does not fit
    optimizer = _optimizer_problem(ckpt.optimizer)
    if optimizer:
        problems.append(optimizer)
    check(ckpt.scaler is None or isinstance(ckpt.scaler, dict) and all(is_number(v) for v in ckpt.scaler.values())
          and (not is_number(ckpt.scaler.get("scale", 1.0)) or ckpt.scaler.get("scale", 1.0) > 0),
          "the AMP scaler state must map names to numbers", ckpt.scaler)
    ema_ok = ckpt.model_ema is None or is_state_dict(ckpt.model_ema)
    check(ema_ok, "model_ema must be a state dict", ckpt.model_ema)
    if ema_ok and ckpt.model_ema is not None:
        bad = tensors_problem(ckpt.model_ema, "model_ema tensor")
        if bad:
            problems.append(bad)
    return problems


def _optimizer_problem(optimizer) -> str | None:
    """The optimizer state's structure: groups of hyper-parameters (plain finite values) and per-parameter
    state (finite tensors and numbers). Whether it fits the model and the optimizer is checked on restoring."""
    if optimizer is None:
        return None
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list) and optimizer["param_groups"]
            and all(isinstance(g, dict) for g in optimizer["param_groups"])):
        return f"the optimizer state must be a dict with 'state' and 'param_groups' (found {show(optimizer)})"
    indices = []
    for group in optimizer["param_groups"]:
        params = group.get("params")
        if not (isinstance(params, list) and all(is_int(i) and 0 <= i < 10**7 for i in params)):
            return f"an optimizer parameter group lists {show(params)} as its parameters"
        indices += params
        for key, value in group.items():
            if key == "params":
                continue
            plain = value is None or isinstance(value, (bool, str)) or is_number(value) or (
                isinstance(value, (tuple, list)) and len(value) <= 8 and all(is_number(v) for v in value))
            if not isinstance(key, str) or not plain:
                return f"the optimizer's {show(key)} is {show(value)}"
    if len(set(indices)) != len(indices):
        return "the optimizer lists a parameter twice"
    for index, state in optimizer["state"].items():
        if index not in indices or not isinstance(state, dict):
            return f"the optimizer holds state {show(state)} for an unknown parameter {show(index)}"
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                problem = tensor_problem(value)
                if problem:
                    return f"the optimizer's {key} of parameter {index} holds {problem}"
            elif not (isinstance(key, str) and (value is None or is_number(value))):
                return f"the optimizer's {show(key)} of parameter {index} is {show(value)}"
    return None


def rng_ok(rng) -> bool:
    """Whether `rng` holds generator states this program can restore (torch, CUDA, Python, NumPy)."""
    if not isinstance(rng, dict) or set(rng) - {"torch", "cuda", "python", "numpy"}:
        return False
    for key in ("torch", "cuda"):
        state = rng.get(key)
        if state is not None and not (isinstance(state, torch.Tensor) and state.dtype == torch.uint8
                                      and state.dim() == 1 and state.layout == torch.strided and not state.is_meta
                                      and (key != "torch" or state.numel() == _TORCH_RNG_BYTES)):
            return False
    python = rng.get("python")
    if python is not None and not (isinstance(python, (list, tuple)) and len(python) == 3 and python[0] == 3
                                   and isinstance(python[1], (list, tuple)) and len(python[1]) == 625
                                   and all(is_int(x) and 0 <= x < 2**32 for x in python[1][:624])
                                   and is_int(python[1][624]) and 0 <= python[1][624] <= 624
                                   and (python[2] is None or is_number(python[2]))):
        return False
    numpy = rng.get("numpy")
    if numpy is not None:
        key = numpy.get("key") if isinstance(numpy, dict) else None
        if not (isinstance(key, torch.Tensor) and key.shape == (624,) and key.dtype == torch.int64
                and key.layout == torch.strided and not key.is_meta and bool(((key >= 0) & (key < 2**32)).all())
                and is_int(numpy.get("pos")) and 0 <= numpy["pos"] <= 624 and numpy.get("has_gauss") in (0, 1)
                and is_int(numpy.get("has_gauss")) and is_number(numpy.get("gauss"))):
            return False
    return True


def _optimizer_kind(group: dict) -> str:
    return "AdamW" if "betas" in group else "SGD" if "momentum" in group else "unknown"


def _fits(fresh, saved) -> bool:
    """Whether a saved hyper-parameter can stand where the fresh optimizer has `fresh`."""
    if fresh is None or isinstance(fresh, bool):
        return saved is None or isinstance(saved, bool)
    if isinstance(fresh, (int, float)):
        return is_number(saved)
    if isinstance(fresh, (tuple, list)):
        return isinstance(saved, (tuple, list)) and len(saved) == len(fresh) and all(is_number(v) for v in saved)
    return type(saved) is type(fresh)


_STATE_KEYS = {"SGD": {"momentum_buffer"}, "AdamW": {"step", "exp_avg", "exp_avg_sq"}}


def optimizer_fit_problem(optimizer: torch.optim.Optimizer, saved: dict, opt_flag: str) -> str | None:
    """Why a checkpoint's optimizer state (its structure already checked) cannot be loaded into `optimizer`:
    another optimizer, other parameters, hyper-parameters or per-parameter state of the wrong type or shape."""
    fresh = optimizer.state_dict()
    fresh_groups, saved_groups = fresh["param_groups"], saved["param_groups"]
    fresh_kind, saved_kind = _optimizer_kind(fresh_groups[0]), _optimizer_kind(saved_groups[0])
    if saved_kind != fresh_kind:
        return f"it is {saved_kind}'s state and this run uses {fresh_kind} (leave --opt {opt_flag} out to continue " \
               f"with the checkpoint's optimizer)"
    if len(saved_groups) != len(fresh_groups) or any(
            len(s["params"]) != len(f["params"]) for s, f in zip(saved_groups, fresh_groups)):
        return "it holds another number of parameters than this model"
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for f, s in zip(fresh_groups, saved_groups):
        for key, value in f.items():
            if key != "params" and key in s and not _fits(value, s[key]):
                return f"its {key} is {show(s[key])}"
    position = {index: n for n, index in enumerate(i for s in saved_groups for i in s["params"])}
    amsgrad = any(s.get("amsgrad") for s in saved_groups)
    needed = _STATE_KEYS.get(fresh_kind, set()) | ({"max_exp_avg_sq"} if amsgrad and fresh_kind == "AdamW" else set())
    for index, state in saved["state"].items():
        param = params[position[index]]
        missing = needed - set(state)
        if missing and not (fresh_kind == "SGD" and not state):
            return f"the state of parameter {index} lacks {', '.join(sorted(missing))}"
        for key, value in state.items():
            if key == "step":
                if not (is_number(value) and value >= 0 or isinstance(value, torch.Tensor) and value.numel() == 1
                        and value.is_floating_point() and bool(value >= 0)):
                    return f"the step count of parameter {index} is {show(value)}"
            elif value is not None and not (isinstance(value, torch.Tensor) and value.shape == param.shape
                                            and value.is_floating_point()):
                return f"the {key} of parameter {index} is {show(value)} where the parameter has shape " \
                       f"{tuple(param.shape)}"
    return None
