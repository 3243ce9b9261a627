"""BART / mBART: post-norm encoder-decoder with biases; the FFN is fc1 -> act -> fc2 inside the layer."""
from .base import Layout, StackLayout


def _slots(cross: bool) -> dict:
    slots = {
        "attn": ("self_attn",),
        "attn.q": ("self_attn.q_proj",),
        "attn.k": ("self_attn.k_proj",),
        "attn.v": ("self_attn.v_proj",),
        "attn.o": ("self_attn.out_proj",),
        "attn_block_out": ("self_attn.out_proj",),
        "ffn.in": ("fc1",),
        "ffn.out": ("fc2",),
        "ffn_block_out": ("fc2",),
        "norms": ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"),
        # post-norm: the residual stream is each sublayer's input; its norm follows the residual add
        "attn_residual": ("self_attn.q_proj",),
        "ffn_residual": ("fc1",),
        "attn_add_norm": ("self_attn_layer_norm",),
        "ffn_add_norm": ("final_layer_norm",),
    }
    if cross:
        slots.update({f"cross_attn.{p}": (f"encoder_attn.{p}_proj",) for p in "qkv"})
        slots["cross_attn.o"] = ("encoder_attn.out_proj",)
        slots["cross_attn"] = ("encoder_attn",)
    return slots


LAYOUT = Layout(
    name="bart",
    model_types=("bart", "mbart"),
    stacks={
        "encoder": StackLayout("encoder.layers", _slots(cross=False), final_norm="encoder.layer_norm"),
        "decoder": StackLayout("decoder.layers", _slots(cross=True), final_norm="decoder.layer_norm",
                               causal=True),
    },
    embeddings=("encoder.embed_tokens", "decoder.embed_tokens"),
    attention={"module": "BartAttention", "scaled": True, "position": "learned_absolute"},
)
