"""BERT / RoBERTa (and look-alikes): post-norm encoder; sublayer outputs pass dropout before the LN."""
from .base import Layout, StackLayout

_SLOTS = {
    "attn": ("attention.self",),
    "attn.q": ("attention.self.query",),
    "attn.k": ("attention.self.key",),
    "attn.v": ("attention.self.value",),
    "attn.o": ("attention.output.dense",),
    "attn_block_out": ("attention.output.dropout",),
    "ffn.in": ("intermediate.dense",),
    "ffn.out": ("output.dense",),
    "ffn_block_out": ("output.dropout",),
    "norms": ("attention.output.LayerNorm", "output.LayerNorm"),
    # post-norm: the LayerNorm over (sublayer output + residual) that follows each block_out
    "attn_block_norm": ("attention.output.LayerNorm",),
    "ffn_block_norm": ("output.LayerNorm",),
    # the module whose input is the residual stream around each sublayer (AdapterHub's `input_tensor`)
    "attn_residual": ("attention.self.query",),
    "ffn_residual": ("intermediate.dense",),
    # the norm over sublayer output + residual, which AdapterHub's adapters may call themselves
    "attn_add_norm": ("attention.output.LayerNorm",),
    "ffn_add_norm": ("output.LayerNorm",),
}

LAYOUT = Layout(
    name="bert",
    model_types=("bert", "roberta", "xlm-roberta", "camembert"),
    stacks={"encoder": StackLayout("encoder.layer", _SLOTS)},
    embeddings=("embeddings.word_embeddings",),
    lm_head=None,
    attention={"module": "BertSelfAttention", "scaled": True, "position": "learned_absolute"},
)
