"""The recorder: hook the routers of a transformers MoE model and write a moesim trace.

torch and transformers are imported only when a recording starts, so
`import moesim` works without them (`pip install 'moesim[record]'` adds them).
"""
from .blocks import LOOKED_FOR, MoEBlock, UnsupportedModel, find_moe_blocks
from .prompts import Prompt, read_prompts
from .recorder import INSTALL_HINT, RecordSummary, load_model, record

__all__ = ["INSTALL_HINT", "LOOKED_FOR", "MoEBlock", "Prompt", "RecordSummary", "UnsupportedModel",
           "find_moe_blocks", "load_model", "read_prompts", "record"]
