"""T5 / mT5 / UMT5 (incl. gated-FFN v1.1): pre-norm, bias-less, relative attention bias."""
from .base import Layout, StackLayout

_FFN = "DenseReluDense"


def _slots(ffn_index: int, cross: bool) -> dict:
    ff = f"layer.{ffn_index}.{_FFN}"
    slots = {
        "attn": ("layer.0.SelfAttention",),
        "attn.q": ("layer.0.SelfAttention.q",),
        "attn.k": ("layer.0.SelfAttention.k",),
        "attn.v": ("layer.0.SelfAttention.v",),
        "attn.o": ("layer.0.SelfAttention.o",),
        "attn_block_out": ("layer.0.SelfAttention.o",),
        "ffn.in": (f"{ff}.wi", f"{ff}.wi_0", f"{ff}.wi_1"),
        "ffn.out": (f"{ff}.wo",),
        "ffn_block_out": (f"{ff}.wo",),
        "norms": tuple(f"layer.{i}.layer_norm" for i in range(ffn_index + 1)),
        # pre-norm: the residual stream is the input of the norm in front of each sublayer
        "attn_residual": ("layer.0.layer_norm",),
        "ffn_residual": (f"layer.{ffn_index}.layer_norm",),
    }
    if cross:
        slots.update({f"cross_attn.{p}": (f"layer.1.EncDecAttention.{p}",) for p in "qkvo"})
        slots["cross_attn"] = ("layer.1.EncDecAttention",)
    return slots


LAYOUT = Layout(
    name="t5",
    model_types=("t5", "mt5", "umt5"),
    stacks={
        "encoder": StackLayout("encoder.block", _slots(1, cross=False), final_norm="encoder.final_layer_norm"),
        "decoder": StackLayout("decoder.block", _slots(2, cross=True), final_norm="decoder.final_layer_norm",
                               causal=True),
    },
    embeddings=("encoder.embed_tokens", "decoder.embed_tokens"),
    attention={"module": "T5Attention", "scaled": False, "position": "relative_bias"},
)
