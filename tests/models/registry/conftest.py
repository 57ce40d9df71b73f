"""Fixtures of the registry's tests: a tiny specialist and its base (saved once per module), a hub stand-in."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.models.registry.fake_hub import FakeHub
from tests.models.registry.tiny import save_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("tiny")
    spec_params = save_tiny(root / "spec", [8, 4])
    base_params = save_tiny(root / "base", None)
    return SimpleNamespace(spec=root / "spec", base=root / "base", spec_params=spec_params, base_params=base_params)


@pytest.fixture
def hub(tmp_path: Path) -> FakeHub:
    return FakeHub(tmp_path / "hub-remote")
