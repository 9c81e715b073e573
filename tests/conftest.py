"""Shared pytest fixtures."""

from pathlib import Path

import pytest

# The offline test data lives beside the project, at ../shared/data (see its README.md).
# A user's checkout has no ../shared, so tests that need it skip instead of failing.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """Use as `pytestmark = pytest.mark.usefixtures("one_thread")`: nano models are too small
    to gain from threads, and on a busy machine two threads wait on each other at every op
    (seconds instead of milliseconds per test)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _private_token_cache(tmp_path_factory):
    """Tokenized-data caches go to a temporary folder, never the user's ~/.cache/minimind."""
    import os

    old = os.environ.get("MINIMIND_CACHE")
    os.environ["MINIMIND_CACHE"] = str(tmp_path_factory.mktemp("token-cache"))
    yield
    if old is None:
        os.environ.pop("MINIMIND_CACHE", None)
    else:
        os.environ["MINIMIND_CACHE"] = old


@pytest.fixture(scope="session")
def tok(shared_data):
    """MiniMind's minimind3 tokenizer (with <think> tokens), shared by the test modules."""
    from minimind.tokenizer import Tokenizer

    return Tokenizer.from_dir(shared_data / "tokenizer" / "minimind3")
