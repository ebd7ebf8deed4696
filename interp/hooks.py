"""`HookPoint`: a named identity in the forward pass where hooks read or replace an activation.

A hook is a plain function `fn(activation, hook) -> Tensor | None`, called during a plain forward
pass. Returning a tensor replaces the activation (editing); returning None leaves it as it was.
Backward hooks have the same signature and receive the gradient of the activation.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any, Union

from torch import Tensor

HookFn = Callable[[Tensor, "HookPoint"], Union[Tensor, None]]
NamesFilter = Union[None, str, Iterable[str], Callable[[str], bool]]


class HookHandle:
    """Returned by `HookPoint.add_hook`; `remove()` detaches that one hook (idempotent)."""

    __slots__ = ("_hooks", "_fn")

    def __init__(self, hooks: list[HookFn], fn: HookFn) -> None:
        self._hooks, self._fn = hooks, fn

    def remove(self) -> None:
        for index, fn in enumerate(self._hooks):
            if fn is self._fn:
                del self._hooks[index]
                return


class HookPoint:
    """Identity on the activation it is called with, unless hooks are attached.

    With no hooks the cost is one attribute check, so every activation can have a hook point.
    Each point declares the shape of what it sees (`"batch pos d_model"`, in the names of DESIGN.md's
    table) and whether it is opt-in (hooking it changes how the forward computes, so only an explicit
    name selects it). The model's hook table is generated from these declarations (`hook_table`).
    """

    __slots__ = ("name", "shape", "opt_in", "serial", "fwd_hooks", "bwd_hooks", "ctx")
    _created = itertools.count()

    def __init__(self, shape: str, opt_in: bool = False) -> None:
        self.name = ""  # set by the model that owns it, e.g. "blocks.3.attn.hook_pattern"
        self.shape = shape
        self.opt_in = opt_in
        self.serial = next(HookPoint._created)  # creation order: modules create their points in forward order
        self.fwd_hooks: list[HookFn] = []
        self.bwd_hooks: list[HookFn] = []
        self.ctx: dict = {}  # scratch space a hook may keep between calls (as TransformerLens's HookPoint.ctx)

    @property
    def has_hooks(self) -> bool:
        return bool(self.fwd_hooks or self.bwd_hooks)

    def add_hook(self, fn: HookFn, dir: str = "fwd", is_permanent: bool = False, prepend: bool = False, *,
                 direction: str | None = None) -> HookHandle:
        """Attach `fn` for direction `dir` ("fwd" or "bwd"; `direction=` is the same); `prepend` runs it first;
        an `is_permanent` hook survives `remove_hooks()` (only `including_permanent=True` removes it)."""
        dir = direction or dir
        if not callable(fn):
            raise TypeError(f"A hook on {self.name!r} must be callable fn(activation, hook), got {type(fn).__name__}.")
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}.")
        hooks = self.fwd_hooks if dir == "fwd" else self.bwd_hooks
        entry = Permanent(fn) if is_permanent else fn
        hooks.insert(0 if prepend else len(hooks), entry)
        return HookHandle(hooks, entry)

    def remove_hooks(self, dir: str = "fwd", including_permanent: bool = False) -> None:
        """Remove the hooks of direction `dir` ("fwd", "bwd" or "both"), keeping permanent ones unless
        `including_permanent` (TransformerLens's defaults; `model.reset_hooks()` removes every hook)."""
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"dir must be 'fwd', 'bwd' or 'both', got {dir!r}.")
        for direction, hooks in (("fwd", self.fwd_hooks), ("bwd", self.bwd_hooks)):
            if dir in (direction, "both"):
                hooks[:] = [fn for fn in hooks if isinstance(fn, Permanent) and not including_permanent]

    def clear_context(self) -> None:
        self.ctx = {}

    def layer(self) -> int:
        """The block this point belongs to (`blocks.{layer}....`); ValueError for the embeddings and ln_final."""
        parts = self.name.split(".")
        if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
            raise ValueError(f"Hook point {self.name!r} is not inside a block, so it has no layer.")
        return int(parts[1])

    def __call__(self, activation: Tensor) -> Tensor:
        if not self.fwd_hooks and not self.bwd_hooks:
            return activation
        for fn in tuple(self.fwd_hooks):
            replacement = fn(activation, self)
            if replacement is not None:
                activation = self._checked(replacement, activation, "forward hook")
        if self.bwd_hooks and activation.requires_grad:
            for fn in self.bwd_hooks:
                activation.register_hook(partial(self._run_backward_hook, fn))
        return activation

    def _run_backward_hook(self, fn: HookFn, grad: Tensor) -> Tensor | None:
        replacement = fn(grad, self)
        return None if replacement is None else self._checked(replacement, grad, "backward hook")

    def _checked(self, replacement: object, original: Tensor, kind: str) -> Tensor:
        if not isinstance(replacement, Tensor):
            raise TypeError(
                f"A {kind} on {self.name!r} returned {type(replacement).__name__}; "
                "return a Tensor to replace the activation, or None to leave it."
            )
        if replacement.shape != original.shape:
            raise ValueError(
                f"A {kind} on {self.name!r} returned shape {tuple(replacement.shape)}, expected "
                f"{tuple(original.shape)}; an edit must keep the activation's shape."
            )
        if replacement.dtype != original.dtype or replacement.device != original.device:
            raise TypeError(
                f"A {kind} on {self.name!r} returned a {replacement.dtype} tensor on {replacement.device}, but the "
                f"activation is {original.dtype} on {original.device}; return "
                f"value.to(activation.dtype, activation.device) (or build it with torch.zeros_like(activation) etc.)."
            )
        return replacement

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r}, [{self.shape}], fwd={len(self.fwd_hooks)}, bwd={len(self.bwd_hooks)})"


class Permanent:
    """A hook registered with `is_permanent=True`: calls `fn`; `remove_hooks(including_permanent=False)` keeps it."""

    __slots__ = ("fn",)

    def __init__(self, fn: HookFn) -> None:
        self.fn = fn

    def __call__(self, tensor: Tensor, hook: HookPoint) -> Tensor | None:
        return self.fn(tensor, hook)

    def __repr__(self) -> str:
        return f"Permanent({self.fn!r})"


def hook_table(root: Any) -> dict[str, HookPoint]:
    """Every `HookPoint` held by `root` (an nn.Module) or its submodules, by dotted attribute path, in the
    order they were created, which is forward order (each module creates its points, and builds its
    submodules, in the order its forward reaches them). Names each point."""
    found = {}
    for prefix, module in root.named_modules():
        for attribute, value in vars(module).items():
            if isinstance(value, HookPoint):
                found[f"{prefix}.{attribute}" if prefix else attribute] = value
    table = dict(sorted(found.items(), key=lambda item: item[1].serial))
    for name, point in table.items():
        point.name = name
    return table


def unknown_name_error(name: str, valid: Iterable[str]) -> KeyError:
    """A KeyError for an unknown hook name that lists the closest valid names."""
    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    hint = f"Did you mean {close}?" if close else "List valid names with model.hook_names()."
    return KeyError(f"Unknown hook name {name!r}. {hint}")


def resolve_names(hook_dict: Mapping[str, HookPoint], names_filter: NamesFilter,
                  default: Iterable[str] | None = None, named_only: Container[str] = ()) -> list[str]:
    """The hook names selected by a name, a list of names, a predicate, or None (= `default`).

    Names in `named_only` (the opt-in points, whose hooking changes how the forward computes) are
    selected only when named explicitly, never by a predicate such as `lambda name: True`.
    """
    if names_filter is None:
        return list(hook_dict if default is None else default)
    if isinstance(names_filter, str):
        names_filter = [names_filter]
    if callable(names_filter):
        return [name for name in hook_dict if name not in named_only and names_filter(name)]
    names = list(names_filter)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"Hook names must be strings, got {type(name).__name__} ({name!r}).")
        if name not in hook_dict:
            raise unknown_name_error(name, hook_dict)
    return names


@contextmanager
def attached(hook_dict: Mapping[str, HookPoint],
             fwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]] = (),
             bwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]] = (),
             named_only: Container[str] = ()) -> Iterator[None]:
    """Attach hooks for the duration of a `with` block; they are removed even if the block raises.

    A predicate never selects a name in `named_only` (see `resolve_names`).
    """
    handles: list[HookHandle] = []
    try:
        for direction, pairs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
            for name_or_filter, fn in checked_pairs(pairs, f"{direction}_hooks"):
                for name in resolve_names(hook_dict, name_or_filter, named_only=named_only):
                    handles.append(hook_dict[name].add_hook(fn, direction))
        yield
    finally:
        for handle in handles:
            handle.remove()


def checked_pairs(pairs: Any, argument: str) -> list[tuple[Any, HookFn]]:
    """`pairs` as a list of `(name_or_filter, fn)`, or a TypeError saying how to pass them."""
    if isinstance(pairs, tuple) and len(pairs) == 2 and isinstance(pairs[0], str) and callable(pairs[1]):
        raise TypeError(f"{argument} takes a list of (name, fn) pairs, got one pair; write {argument}=[({pairs[0]!r}, fn)].")
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Iterable):
        raise TypeError(f"{argument} takes a list of (name, fn) pairs, got {type(pairs).__name__}.")
    listed = list(pairs)
    for pair in listed:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"Each entry of {argument} must be a (name_or_filter, fn) pair, got {pair!r}.")
    return listed
