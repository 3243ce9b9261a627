"""Every method registers itself on import; importing this package registers them all."""
from . import bitfit, bottleneck, full, ia3, lora  # noqa: F401
from . import kernel  # noqa: F401
from . import inducer  # noqa: F401
from . import prefix, prompt  # noqa: F401
from . import intrinsic, lowrank, phm  # noqa: F401
from . import attempt, spot  # noqa: F401
from . import combos  # noqa: F401
from . import invertible  # noqa: F401
from . import fusion, weighted_sum  # noqa: F401
from . import lora_adapterhub, prefix_adapterhub, prompt_adapterhub  # noqa: F401
