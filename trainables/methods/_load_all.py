"""Import every method module so each registers itself."""

import importlib
import pkgutil

from . import __path__ as _pkg_path

for _info in pkgutil.iter_modules(_pkg_path):
    if not _info.name.startswith("_") and _info.name != "base":
        importlib.import_module(f"{__package__}.{_info.name}")
