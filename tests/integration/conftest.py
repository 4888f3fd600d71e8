"""Fixtures the integration tests share: `postgres_url` (a PostgreSQL database of this session's own),
`postgres_helper` (that module, for tests that need more databases) and `s3_endpoint` (moto's S3 server).

tests/ is not a package, so the helper modules next to this file are loaded by path, once per process.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _load(filename: str) -> ModuleType:
    name = f"lifecycle_tests_{Path(filename).stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(filename))
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


postgres_url = _load("postgres.py").postgres_url
s3_endpoint = _load("moto_s3.py").s3_endpoint


@pytest.fixture(scope="session")
def postgres_helper() -> ModuleType:
    return _load("postgres.py")
