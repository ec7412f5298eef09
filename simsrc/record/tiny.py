"""Tiny random-weight configurations of the MoE families the recorder supports.

Real model code, toy sizes (3 layers, hidden 32, 8 experts): what the tests,
the benchmark and the README example record, since nothing here can download
weights. Each keeps its family's routing features: Qwen2-MoE's shared expert
and a dense layer, DeepSeek's dense first layer and group-limited routing,
GPT-OSS's router bias and sliding window.
"""
from __future__ import annotations

COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)

ARCHITECTURES = {
    "mixtral": dict(num_local_experts=8, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=64, norm_topk_prob=False, mlp_only_layers=[1]),
    "qwen3_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                      head_dim=8),
    "deepseek_v2": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                        first_k_dense_replace=1, topk_method="group_limited_greedy", n_group=4, topk_group=2,
                        kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                        num_key_value_heads=4, routed_scaling_factor=1.0),
    "deepseek_v3": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                        first_k_dense_replace=1, n_group=4, topk_group=2, kv_lora_rank=16, q_lora_rank=16,
                        qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, num_key_value_heads=4,
                        routed_scaling_factor=2.5),
    "olmoe": dict(num_experts=8, num_experts_per_tok=2),
    "gpt_oss": dict(num_local_experts=8, num_experts_per_tok=2, head_dim=8, sliding_window=8,
                    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "phimoe": dict(num_local_experts=8, num_experts_per_tok=2),
    "granitemoe": dict(num_local_experts=8, num_experts_per_tok=2),
}


def tiny_config(arch: str, **overrides):
    from transformers import AutoConfig
    if arch not in ARCHITECTURES:
        raise ValueError(f"no tiny configuration for {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return AutoConfig.for_model(arch, **{**COMMON, **ARCHITECTURES[arch], **overrides})


def tiny_model(arch: str, *, seed: int = 0, **overrides):
    """A randomly initialised model of `arch` (a transformers model_type), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM
    config = tiny_config(arch, **overrides)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()
