"""The specification's import line for the registry cache: ``from registry_cache import init_cache``.

The same names as ``from runtime import ...``; the code lives in ``runtime/api.py``.
"""

from runtime.api import RegistryCache, init_cache

__all__ = ["RegistryCache", "init_cache"]
