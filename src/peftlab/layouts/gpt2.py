"""GPT-2: pre-norm decoder with Conv1D projections (weight stored as in x out) and a fused qkv."""
from .base import Layout, StackLayout

_SLOTS = {
    "attn": ("attn",),
    "attn.qkv": ("attn.c_attn",),
    "attn.o": ("attn.c_proj",),
    "attn_block_out": ("attn.c_proj",),
    "ffn.in": ("mlp.c_fc",),
    "ffn.out": ("mlp.c_proj",),
    "ffn_block_out": ("mlp.c_proj",),
    "norms": ("ln_1", "ln_2"),
    # pre-norm: the residual stream is the input of the norm in front of each sublayer
    "attn_residual": ("ln_1",),
    "ffn_residual": ("ln_2",),
}

LAYOUT = Layout(
    name="gpt2",
    model_types=("gpt2",),
    stacks={"decoder": StackLayout("h", _SLOTS, final_norm="ln_f", causal=True)},
    embeddings=("wte",),
    # q, k and v share one projection here: asking for any of them targets the fused c_attn once.
    aliases={"attn.q": "attn.qkv", "attn.k": "attn.qkv", "attn.v": "attn.qkv"},
    attention={"module": "GPT2Attention", "scaled": True, "position": "learned_absolute", "fused_qkv": True},
)
