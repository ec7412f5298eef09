import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "traces"
REAL = Path(os.environ.get("MOESIM_REAL_TRACES", ROOT.parent / "shared" / "real-traces"))


@pytest.fixture
def real_traces() -> Path:
    """The public traces in ../shared/real-traces; tests that need them skip cleanly without them."""
    if not REAL.is_dir():
        pytest.skip(f"real traces not found at {REAL} (set MOESIM_REAL_TRACES)")
    return REAL


@pytest.fixture(autouse=True, scope="session")
def _own_stream_cache(tmp_path_factory):
    """The suite caches access streams in a folder of its own, never the user's (and starts empty)."""
    os.environ["MOESIM_CACHE_DIR"] = str(tmp_path_factory.mktemp("moesim-cache"))
