"""During-training pruning methods, one file each, one registry (``METHODS``).

Each method module registers itself with ``@METHODS.register("name")``; importing this
package imports them all.
"""
from .base import METHODS, Method, MethodCallback, build, get, names

__all__ = ["METHODS", "Method", "MethodCallback", "build", "get", "names"]
from . import gmp  # noqa: E402,F401  (registers "gmp")
from . import ste_fixed  # noqa: E402,F401  (registers "ste_fixed")
from . import sparsity_loss  # noqa: E402,F401  (registers "sparsity_loss")
from . import ltp  # noqa: E402,F401  (registers "ltp")
from . import slimming  # noqa: E402,F401  (registers "slimming")
from . import sss  # noqa: E402,F401  (registers "sss")
