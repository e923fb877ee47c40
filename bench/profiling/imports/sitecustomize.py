"""For bench/run's `imports` section (on PYTHONPATH there): make `importlib.import_module`
go through `__import__`, so that `python -X importtime` reports what it loads.

importtime is written by the interpreter's C import path only; import_module() runs
importlib's Python path and is not reported, yet iotctl loads every protocol module and
express lane that way (iotctl/registry.py names them as strings). Same modules, same
order: only the report changes.
"""

import importlib
import sys


def _import_module(name, package=None):
    if name.startswith("."):
        from importlib.util import resolve_name

        name = resolve_name(name, package)
    __import__(name)
    return sys.modules[name]


importlib.import_module = _import_module
