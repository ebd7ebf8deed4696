"""`interp.tl.hook_points`: TransformerLens's `HookPoint` and `HookedRootModule` names.

`HookPoint()` takes no arguments here, as in TransformerLens, so code that builds its own modules with hook
points (an SAE with `hook_sae_acts_post`, a transcoder) can splice them into a model: assign the module in place of
a hook point (`model.blocks[0].attn.hook_z = sae`) and call `model.setup()`; its points join `model.hook_dict`
under dotted names (`blocks.0.attn.hook_z.hook_sae_acts_post`). This `HookPoint` is an `nn.Module`, as
TransformerLens's, so it can be assigned where a module was (SAELens removes an SAE with
`setattr(parent, "hook_z", HookPoint())`); the model's own points are interp's plain `interp.hooks.HookPoint`s,
which `nn.Module` refuses to assign over a module: `delattr(parent, "hook_z")` first to put one of those back.
Either way a hook is a plain function called in the forward, and `has_hooks` is a property.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from interp import hooks as core_hooks

NamesFilter = core_hooks.NamesFilter
HookFunction = Callable[..., Any]


class HookPoint(core_hooks.HookPoint, nn.Module):
    """An identity point where hooks read or replace an activation (shape declared "" unless given); a module."""

    __slots__ = ()

    def __init__(self, shape: str = "", opt_in: bool = False) -> None:
        nn.Module.__init__(self)
        core_hooks.HookPoint.__init__(self, shape, opt_in)

    def __getstate__(self) -> tuple[dict, dict]:  # nn.Module's would drop interp's slots (name, hooks, ...)
        return self.__dict__.copy(), {slot: getattr(self, slot) for slot in core_hooks.HookPoint.__slots__}

    def __setstate__(self, state: tuple[dict, dict]) -> None:
        attributes, slots = state
        nn.Module.__setstate__(self, attributes)
        for slot, value in slots.items():
            object.__setattr__(self, slot, value)


def hook_table(root: nn.Module) -> dict[str, core_hooks.HookPoint]:
    """`interp.hooks.hook_table` that also finds the hook points registered as submodules (this file's
    `HookPoint`s), by dotted path, in creation order; names each point."""
    found = dict(core_hooks.hook_table(root))
    found.update((name, module) for name, module in root.named_modules() if isinstance(module, core_hooks.HookPoint))
    table = dict(sorted(found.items(), key=lambda item: item[1].serial))
    for name, point in table.items():
        point.name = name
    return table


class HookedRootModule(nn.Module):
    """A module whose hook points are collected by `setup()` into `hook_dict` (name -> HookPoint) and `mod_dict`,
    with TransformerLens's `hooks()` / `run_with_hooks` / `add_hook` / `reset_hooks` over them."""

    def setup(self) -> None:
        self.hook_dict = hook_table(self)
        self.mod_dict = {name: module for name, module in self.named_modules() if name}
        self.mod_dict.update(self.hook_dict)

    def hook_points(self):  # noqa: ANN201 - TransformerLens returns dict values
        return self.hook_dict.values()

    def add_hook(self, name: str | Callable[[str], bool], hook: HookFunction, dir: str = "fwd",
                 is_permanent: bool = False, level: int | None = None, prepend: bool = False) -> None:
        for hook_name in core_hooks.resolve_names(self.hook_dict, name):
            self.hook_dict[hook_name].add_hook(hook, dir, is_permanent=is_permanent, prepend=prepend)

    def reset_hooks(self, clear_contexts: bool = True, direction: str = "both", including_permanent: bool = False,
                    level: int | None = None) -> None:
        for point in self.hook_dict.values():
            if clear_contexts:
                point.clear_context()
            point.remove_hooks(direction, including_permanent=including_permanent)

    def hooks(self, fwd_hooks: list = (), bwd_hooks: list = ()) -> Any:
        return core_hooks.attached(self.hook_dict, fwd_hooks, bwd_hooks)

    def run_with_hooks(self, *model_args: Any, fwd_hooks: list = (), bwd_hooks: list = (), **model_kwargs: Any) -> Any:
        with self.hooks(fwd_hooks, bwd_hooks):
            return self(*model_args, **model_kwargs)


__all__ = ["HookPoint", "HookedRootModule", "NamesFilter", "HookFunction", "hook_table"]
