"""interp: mechanistic interpretability for GPT-2, GPT-NeoX (Pythia), Llama, Mistral and Qwen2 models in readable PyTorch."""

from interp.cache import ActivationCache
from interp.components.context import KVCache
from interp.config import Config
from interp.hooks import HookPoint
from interp.model import HookedTransformer
from interp.names import act_name

__version__ = "0.1.0"
__all__ = ["ActivationCache", "Config", "HookPoint", "HookedTransformer", "KVCache", "act_name", "__version__"]
