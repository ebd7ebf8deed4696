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

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

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
    """TransformerLens's hook API over a module's hook points: `setup()` collects them into `hook_dict` (name ->
    HookPoint) and `mod_dict`; `add_hook` / `add_perma_hook` / `reset_hooks(including_permanent=)`, the `hooks()`
    context manager and `run_with_hooks(*args, fwd_hooks=, reset_hooks_end=)`. `interp.tl.HookedTransformer` is one.
    A model's opt-in points (`opt_in_names`) are selected by their names only, never by a predicate."""

    def setup(self) -> None:
        self.hook_dict = hook_table(self)
        self.mod_dict = {name: module for name, module in self.named_modules() if name}
        self.mod_dict.update(self.hook_dict)

    def hook_points(self):  # noqa: ANN201 - TransformerLens returns dict values
        return self.hook_dict.values()

    def _selected(self, name: str | Callable[[str], bool]) -> list[str]:
        """The hook names a name or a predicate selects (KeyError with suggestions for an unknown name)."""
        return core_hooks.resolve_names(self.hook_dict, name, named_only=getattr(self, "opt_in_names", ()))

    def add_hook(self, name: str | Callable[[str], bool], hook: HookFunction, dir: str = "fwd",
                 is_permanent: bool = False, level: int | None = None, prepend: bool = False) -> None:
        """Attach `hook(activation, hook_point)` to a named point or every point a predicate selects, until
        `reset_hooks()` (`is_permanent`: until `reset_hooks(including_permanent=True)`). `level` is ignored."""
        for hook_name in self._selected(name):
            self.hook_dict[hook_name].add_hook(hook, dir, is_permanent=is_permanent, prepend=prepend)

    def add_perma_hook(self, name: str | Callable[[str], bool], hook: HookFunction, dir: str = "fwd") -> None:
        self.add_hook(name, hook, dir=dir, is_permanent=True)

    def remove_all_hook_fns(self, direction: str = "both", including_permanent: bool = False,
                            level: int | None = None) -> None:
        for point in self.hook_dict.values():
            point.remove_hooks(direction, including_permanent=including_permanent)

    def clear_contexts(self) -> None:
        for point in self.hook_dict.values():
            point.clear_context()

    def reset_hooks(self, clear_contexts: bool = True, direction: str = "both", including_permanent: bool = False,
                    level: int | None = None) -> None:
        if clear_contexts:
            self.clear_contexts()
        self.remove_all_hook_fns(direction, including_permanent)
        self.is_caching = False

    @contextmanager
    def hooks(self, fwd_hooks: Any = (), bwd_hooks: Any = (), reset_hooks_end: bool = True,
              clear_contexts: bool = False) -> Iterator[Any]:
        """Hooks for a `with` block, removed on exit (even after an error) unless `reset_hooks_end=False`."""
        handles = []
        try:
            for direction, pairs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
                for name, fn in core_hooks.checked_pairs(pairs, f"{direction}_hooks"):
                    handles += [self.hook_dict[hook_name].add_hook(fn, direction) for hook_name in self._selected(name)]
            yield self
        finally:
            if reset_hooks_end:
                for handle in handles:
                    handle.remove()
                if clear_contexts:
                    self.clear_contexts()

    def run_with_hooks(self, *model_args: Any, fwd_hooks: Any = (), bwd_hooks: Any = (), reset_hooks_end: bool = True,
                       clear_contexts: bool = False, **model_kwargs: Any) -> Any:
        """`self(*model_args, **model_kwargs)` with temporary hooks. Backward hooks fire in a later `.backward()` even
        with `reset_hooks_end=True` (interp registers them on the tensors of this forward)."""
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self(*model_args, **model_kwargs)

    def run_with_cache(self, *model_args: Any, names_filter: Any = None, device: Any = None,
                       remove_batch_dim: bool = False, incl_bwd: bool = False, reset_hooks_end: bool = True,
                       clear_contexts: bool = False, **model_kwargs: Any) -> tuple[Any, dict[str, Tensor]]:
        """`(output, {name: activation})` of one call (`name + "_grad"` too with `incl_bwd`, which calls
        `.backward()` on the scalar output, as TransformerLens's HookedRootModule). names_filter: None (every point),
        a name, a list of names or a predicate. `interp.tl.HookedTransformer` returns an `ActivationCache` instead."""
        names = [name for name in self.hook_dict if name not in getattr(self, "opt_in_names", ())] \
            if names_filter is None else self._selected(names_filter)
        cache: dict[str, Tensor] = {}

        def saver(suffix: str) -> HookFunction:
            def save(tensor: Tensor, hook: core_hooks.HookPoint) -> None:
                value = tensor.detach() if device is None else tensor.detach().to(device)
                cache[hook.name + suffix] = value[0] if remove_batch_dim else value
            return save

        bwd = [(name, saver("_grad")) for name in names] if incl_bwd else []
        with self.hooks([(name, saver("")) for name in names], bwd, reset_hooks_end, clear_contexts):
            output = self(*model_args, **model_kwargs)
            if incl_bwd:
                output.backward()
        return output, cache


__all__ = ["HookPoint", "HookedRootModule", "NamesFilter", "HookFunction", "hook_table"]
