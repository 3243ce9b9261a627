"""peftlab: parameter-efficient transfer learning on Hugging Face transformers models.

    import peftlab as pl
    pl.attach(model, pl.Compacter(reduction_factor=32), name="rte")
    print(pl.summary(model))

The package is built in layers, each importing only those below it (docs/extending.md).
"""
from . import adapterhub
from . import methods as _methods  # noqa: F401  (registers every method)
from .adapterhub import export_adapterhub
from .average import average
from .blocks import Average, AverageOutputs, BatchSplit, Fuse, ParallelBlock, Split, Stack, WeightedSum
from .calls import route
from .config import MethodConfig
from .core import activate, adapters, deactivate, detach, summary, train_adapter, trainable_parameters
from .eject import eject_prefix
from .errors import PeftlabError
from .io import attach, save
from .loading import load
from .merging import merge, unmerge
from .methods.attempt import Attempt
from .methods.bitfit import BitFit
from .methods.bottleneck import (Bottleneck, DoubleSeqBn, DoubleSeqBnInv, Houlsby, Parallel, ParBn, Pfeiffer,
                                 SeqBn, SeqBnInv)
from .methods.combos import MAM, UniPELT
from .methods.full import FullFinetune
from .methods.ia3 import IA3
from .methods.inducer import Inducer, InducerLoRA, InducerMAM
from .methods.intrinsic import IntrinsicSAID
from .methods.invertible import InvertibleAdapter
from .methods.kernel import KernelAdapter, KernelMix
from .methods.lora import LoRA
from .methods.lowrank import LowRankAdapter
from .methods.phm import Compacter, CompacterPlusPlus, PHMAdapter
from .methods.prefix import PrefixTuning
from .methods.prompt import PromptTuning
from .methods.spot import SPoT
from .peft_interop import export_peft
from .registry import config_from_dict, method_names
from .unload import merge_and_unload, unload

__version__ = "0.1.0"

__all__ = [
    "attach", "detach", "activate", "deactivate", "train_adapter", "adapters", "summary", "trainable_parameters",
    "save", "load", "merge", "unmerge", "merge_and_unload", "unload", "export_peft", "config_from_dict", "method_names", "average",
    "export_adapterhub", "adapterhub", "SeqBn", "DoubleSeqBn", "ParBn", "SeqBnInv", "DoubleSeqBnInv",
    "MethodConfig", "PeftlabError",
    "Bottleneck", "Houlsby", "Pfeiffer", "Parallel", "LoRA", "IA3", "BitFit", "FullFinetune",
    "PHMAdapter", "Compacter", "CompacterPlusPlus", "LowRankAdapter", "IntrinsicSAID",
    "PromptTuning", "PrefixTuning", "SPoT", "Attempt", "eject_prefix",
    "KernelAdapter", "KernelMix", "Inducer", "InducerLoRA", "InducerMAM", "MAM", "UniPELT",
    "Stack", "Fuse", "WeightedSum", "ParallelBlock", "BatchSplit", "Average", "route", "InvertibleAdapter",
    "Split", "AverageOutputs",
]
