"""Test-session setup.

``SCORESTREAM_TEST_WITHOUT=torch,verovio,…`` makes those modules unimportable for
this pytest process (``sys.modules[name] = None``), which is exactly how a
serving-only install looks to the code: the tests that need them must skip
cleanly, the serving tests must pass.  tests/test_packaging.py uses it.
"""

from __future__ import annotations

import os
import sys

for _name in filter(None, (s.strip() for s in os.environ.get("SCORESTREAM_TEST_WITHOUT", "").split(","))):
    sys.modules[_name] = None  # type: ignore[assignment]
