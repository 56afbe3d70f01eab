"""`gateway.audit.speedups`, the audit tools' hot loops compiled, if this install has it.

setup.py builds it where there is a C compiler and OpenSSL's headers; elsewhere `speedups`
is None and every caller runs the same loop in Python (the reference it is tested against).
Tests set it to None to check both.
"""

from __future__ import annotations

from types import ModuleType

speedups: ModuleType | None
try:
    from gateway.audit import speedups
except ImportError:  # not built here
    speedups = None
