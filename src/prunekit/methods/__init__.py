"""During-training pruning methods, one file each, one registry (``METHODS``).

Each method module registers itself with ``@METHODS.register("name")``; importing this
package imports them all.
"""
from .base import METHODS, Method, MethodCallback, get, names

__all__ = ["METHODS", "Method", "MethodCallback", "get", "names"]
from . import gmp  # noqa: E402,F401  (registers "gmp")
