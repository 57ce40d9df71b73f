"""Fixtures of the search tests (tests/pruning/test_search*.py)."""

import pytest

from moe_specialists.pruning.calibrate import CalibrationConfig, calibrate

TINY = "models/tiny_translator"


@pytest.fixture(scope="module")
def stats(sample_dir, tmp_path_factory):
    """Statistics of the bundled translator, en<->{de,fr}, 20 passages of the shipped sample (once per module)."""
    out = tmp_path_factory.mktemp("stats") / "stats.safetensors"
    return calibrate(CalibrationConfig(model=TINY, data_dir=sample_dir, languages=["de", "fr"], out=out,
                                       direction="both", limit=20))
