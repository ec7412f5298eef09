"""Published dimensions of the MoE models the importers meet, in one place.

Traces store bytes_per_expert and dense_bytes_per_layer so a replay can charge
transfers; sources rarely record them, so importers take them from here.
Parameter counts come from each model's published config.json (numbers in the
comments); bytes = parameters x bytes per parameter of the stated dtype.
"""
from __future__ import annotations

from dataclasses import dataclass, field

BYTES_PER_PARAM = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "fp8": 1.0, "int8": 1.0}


@dataclass(frozen=True)
class ModelDims:
    model: str                 # Hugging Face id
    num_layers: int
    moe_layers: tuple[int, ...]
    num_experts: int
    top_k: int
    shared_experts: int
    hidden: int
    expert_intermediate: int
    projections: int           # weight matrices per expert (3 for gated SwiGLU, 2 for a plain FFN)
    dense_params_per_layer: int  # non-expert weights of one MoE layer: attention, shared experts, router, norms
    dtype: str                 # the dtype the model is published in
    aliases: tuple[str, ...] = field(default=())
    kv_values_per_token: int = 0  # K and V values one token caches per layer (0: not known, or no cache)

    @property
    def expert_params(self) -> int:
        return self.projections * self.hidden * self.expert_intermediate

    def bytes_per_expert(self, dtype: str | None = None) -> int:
        return int(self.expert_params * BYTES_PER_PARAM[dtype or self.dtype])

    def dense_bytes_per_layer(self, dtype: str | None = None) -> int:
        return int(self.dense_params_per_layer * BYTES_PER_PARAM[dtype or self.dtype])

    def kv_bytes_per_token(self, dtype: str | None = None) -> int:
        """KV-cache bytes one token adds per layer, in `dtype` (the model's own by default)."""
        return int(self.kv_values_per_token * BYTES_PER_PARAM[dtype or self.dtype])


# DeepSeek-V2-Lite(-Chat) config.json: hidden_size 2048, moe_intermediate_size 1408, n_routed_experts 64,
# num_experts_per_tok 6, n_shared_experts 2, num_hidden_layers 27, first_k_dense_replace 1,
# 16 heads, q_lora_rank null, kv_lora_rank 512, qk_nope_head_dim 128, qk_rope_head_dim 64, v_head_dim 128.
# Dense part of a MoE layer (MLA attention + 2 shared experts + router + 2 RMSNorms):
#   q_proj 2048*16*192 = 6,291,456; kv_a_proj_with_mqa 2048*(512+64) = 1,179,648; kv_a_layernorm 512;
#   kv_b_proj 512*16*(128+128) = 2,097,152; o_proj 16*128*2048 = 4,194,304;
#   shared experts 2*3*2048*1408 = 17,301,504; gate 64*2048 = 131,072; norms 2*2048 = 4,096
#   total 31,199,744. KV cache (MLA): the compressed kv_lora_rank 512 + the rope key 64 = 576 values a token.
DSV2_LITE = ModelDims(
    model="deepseek-ai/DeepSeek-V2-Lite-Chat", num_layers=27, moe_layers=tuple(range(1, 27)),
    num_experts=64, top_k=6, shared_experts=2, hidden=2048, expert_intermediate=1408, projections=3,
    dense_params_per_layer=31_199_744, dtype="bfloat16", kv_values_per_token=576,
    aliases=("dsv2-lite", "deepseek-v2-lite", "deepseek-ai/DeepSeek-V2-Lite"),
)

# Mixtral-8x7B config.json: hidden_size 4096, intermediate_size 14336, 8 experts, top-2, 32 layers,
# 32 heads / 8 KV heads of 128. Dense part: q,o 4096*4096 each; k,v 4096*1024 each -> 41,943,040;
# router 8*4096 = 32,768; norms 2*4096 = 8,192; total 41,984,000. KV cache: K and V of 8 heads of 128 = 2,048.
MIXTRAL_8X7B = ModelDims(
    model="mistralai/Mixtral-8x7B-Instruct-v0.1", num_layers=32, moe_layers=tuple(range(32)),
    num_experts=8, top_k=2, shared_experts=0, hidden=4096, expert_intermediate=14336, projections=3,
    dense_params_per_layer=41_984_000, dtype="bfloat16", kv_values_per_token=2048,
    aliases=("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1", "neuralmagic/Mixtral-8x7B-Instruct-v0.1-FP8"),
)

# google/switch-base-8: d_model 768, d_ff 3072, 8 experts, top-1; 12 encoder blocks, every other one
# sparse (1, 3, ..., 11). Expert = wi + wo (2 projections). Dense part of a sparse encoder block:
# self-attention 4*768*768 = 2,359,296; router 8*768 = 6,144; 2 layer norms 2*768 = 1,536 -> 2,366,976.
SWITCH_BASE_8 = ModelDims(
    model="google/switch-base-8", num_layers=12, moe_layers=(1, 3, 5, 7, 9, 11),
    num_experts=8, top_k=1, shared_experts=0, hidden=768, expert_intermediate=3072, projections=2,
    dense_params_per_layer=2_366_976, dtype="float32", aliases=("switch-base-8",),
)

# Qwen3-30B-A3B config.json: hidden 2048, moe_intermediate_size 768, 128 experts, top-8, 48 layers,
# 32 heads / 4 KV heads of 128. Dense: q 2048*4096, k,v 2048*512 each, o 4096*2048 -> 18,874,368;
# q/k norms 2*128; router 128*2048 = 262,144; norms 2*2048 -> 19,140,864. KV cache: K and V of 4 heads of 128
# = 1,024 values a token.
QWEN3_30B_A3B = ModelDims(
    model="Qwen/Qwen3-30B-A3B", num_layers=48, moe_layers=tuple(range(48)),
    num_experts=128, top_k=8, shared_experts=0, hidden=2048, expert_intermediate=768, projections=3,
    dense_params_per_layer=19_140_864, dtype="bfloat16", aliases=("qwen3-30b-a3b",), kv_values_per_token=1024,
)

# ibm-granite/granite-3.0-1b-a400m-instruct config.json: hidden 1024, intermediate_size 512 (per expert),
# 32 local experts, top-8, 24 layers (all MoE), 16 heads / 8 KV heads of 64. Dense: q,o 1024*1024 each,
# k,v 1024*512 each -> 3,145,728; router 32*1024 = 32,768; norms 2*1024 = 2,048; total 3,180,544. KV cache:
# K and V of 8 heads of 64 = 1,024 values a token.
GRANITE_3_1B_A400M = ModelDims(
    model="ibm-granite/granite-3.0-1b-a400m-instruct", num_layers=24, moe_layers=tuple(range(24)),
    num_experts=32, top_k=8, shared_experts=0, hidden=1024, expert_intermediate=512, projections=3,
    dense_params_per_layer=3_180_544, dtype="bfloat16", kv_values_per_token=1024,
    aliases=("granite-3.0-1b-a400m", "ibm-granite/granite-3.0-1b-a400m-base", "granite-3.0-1b-a400m-instruct"),
)

KNOWN_MODELS: dict[str, ModelDims] = {}
for _m in (DSV2_LITE, MIXTRAL_8X7B, SWITCH_BASE_8, QWEN3_30B_A3B, GRANITE_3_1B_A400M):
    for _name in (_m.model, *_m.aliases):
        KNOWN_MODELS[_name.lower()] = _m


def known_model(name: str | None) -> ModelDims | None:
    """The dims of a model by its Hugging Face id or short alias (case-insensitive), else None."""
    return KNOWN_MODELS.get(name.lower()) if name else None
