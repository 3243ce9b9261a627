"""Pure tensor code shared by methods: no modules, no state.

`fwht` — the unnormalized fast Walsh–Hadamard transform (exact, its own transpose, autograd-aware).
`kronecker_sum`, `low_rank_product` — the parameterized hypercomplex (PHM) weight W = sum_i A_i (x) B_i.
`fastfood`, `draw_pieces` — Fastfood random projections (intrinsic SAID / DID).
"""
from .fastfood import draw_pieces, fastfood
from .fwht import fwht, hadamard_matrix
from .phm import kronecker_sum, low_rank_product, net_dtype

__all__ = ["fwht", "hadamard_matrix", "kronecker_sum", "low_rank_product", "net_dtype", "fastfood", "draw_pieces"]
