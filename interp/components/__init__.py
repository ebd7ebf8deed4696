"""The pieces a model is built from; `factory` chooses among them once, from the Config.

- `functional`: affine, activations, widening to float32, softmax, causal/sliding-window masks
- `norms`: LayerNorm, RMSNorm and their folded forms
- `positions`: rotary embeddings (half-split or interleaved, rescaled)
- `attention`: multi-head / grouped-query attention, learned or rotary positions
- `mlp`: standard and gated MLPs
- `blocks`: sequential and parallel residual blocks
- `context`: what every block of one forward shares: position ids, the padding mask, a `KVCache`
"""

from interp.components.attention import Attention, RotaryAttention, per_query_head
from interp.components.blocks import Block, ParallelBlock
from interp.components.context import CachedContext, Context, KVCache
from interp.components.functional import ACTIVATIONS, activation, activation_function, affine, causal_mask, softmax
from interp.components.mlp import MLP, GatedMLP
from interp.components.norms import LayerNorm, LayerNormPre, Norm, RMSNorm, RMSNormPre
from interp.components.positions import InterleavedRotary, Rotary, inverse_frequencies

__all__ = ["ACTIVATIONS", "Attention", "Block", "CachedContext", "Context", "GatedMLP", "KVCache", "InterleavedRotary", "LayerNorm", "LayerNormPre", "MLP",
           "Norm", "ParallelBlock", "RMSNorm", "RMSNormPre", "Rotary", "RotaryAttention", "activation",
           "activation_function", "affine", "causal_mask", "inverse_frequencies", "per_query_head", "softmax"]
