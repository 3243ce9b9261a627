"""Llama and its look-alikes (Mistral, Qwen2, SmolLM2): pre-RMSNorm decoder, gated SiLU MLP, rotary."""
from .base import Layout, StackLayout

_SLOTS = {
    "attn": ("self_attn",),
    "attn.q": ("self_attn.q_proj",),
    "attn.k": ("self_attn.k_proj",),
    "attn.v": ("self_attn.v_proj",),
    "attn.o": ("self_attn.o_proj",),
    "attn_block_out": ("self_attn.o_proj",),
    "ffn.in": ("mlp.gate_proj", "mlp.up_proj"),
    "ffn.out": ("mlp.down_proj",),
    "ffn_block_out": ("mlp.down_proj",),
    "norms": ("input_layernorm", "post_attention_layernorm"),
    # pre-norm: the residual stream is the input of the norm in front of each sublayer
    "attn_residual": ("input_layernorm",),
    "ffn_residual": ("post_attention_layernorm",),
}

LAYOUT = Layout(
    name="llama",
    model_types=("llama", "mistral", "qwen2"),
    stacks={"decoder": StackLayout("layers", _SLOTS, final_norm="norm", causal=True)},
    embeddings=("embed_tokens",),
    attention={"module": "LlamaAttention", "scaled": True, "position": "rotary", "grouped_kv": True},
)
