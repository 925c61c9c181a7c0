"""Dataset registration: each module of this package registers one dataset family on import.

Every module found here is imported, so a new dataset family only needs its own module.
"""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
