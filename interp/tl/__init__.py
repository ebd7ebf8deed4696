"""`interp.tl`: TransformerLens 3's API over interp, so TransformerLens code runs after changing its imports only.

    from interp.tl import HookedTransformer, ActivationCache, FactoredMatrix, HookedTransformerConfig, utils
    from interp.tl import patching, head_detector, evals
    from interp.tl.hook_points import HookPoint

The same model, cache and numbers as interp (equal to `transformers`), with TransformerLens's names, signatures,
defaults and return types: `from_pretrained` processes weights by default, caches return plain tensors, "layer L"
means every block before L, and so on. interp's own API (`interp.HookedTransformer`) keeps its own choices (raw
weights by default, labelled component stacks, a logit lens that normalises each layer with its own scale). The
README's "Coming from TransformerLens" section lists where `interp.tl` still differs, and why.
"""

from interp.tl import evals, head_detector, hook_points, patching, utils
from interp.tl.cache import ActivationCache
from interp.tl.config import HookedTransformerConfig
from interp.tl.factored import FactoredMatrix
from interp.tl.hook_points import HookedRootModule, HookPoint
from interp.tl.model import HookedTransformer, Output

__all__ = ["ActivationCache", "FactoredMatrix", "HookPoint", "HookedRootModule", "HookedTransformer",
           "HookedTransformerConfig", "Output", "evals", "head_detector", "hook_points", "patching", "utils"]
