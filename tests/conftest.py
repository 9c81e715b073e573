"""Shared pytest fixtures.

Test data comes from two places:
- what the project makes itself, so the tests run on any clone: `tok_dir`/`tok`, a tokenizer
  trained at the start of the run from the built-in demo corpus (tests/helpers.py), and
  records the tests generate (helpers.chat_records and friends);
- MiniMind's own files at ../shared/data (see its README.md): `shared_data`, `minimind_tok`.
  Only the tests of compatibility with MiniMind's tokenizer, data and weights use them. A
  user's clone has no ../shared, and those tests skip.

MINIMIND_TEST_NO_SHARED=1 hides ../shared/data, to run the suite as a user's clone does
(.ci/run runs it both ways).
"""

import os
from pathlib import Path

import pytest

# Every test reaches ../shared/data through the `shared_data` fixture below, never by path.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HIDE_SHARED = os.environ.get("MINIMIND_TEST_NO_SHARED", "") not in ("", "0")


def pytest_report_header(config):
    where = "hidden (MINIMIND_TEST_NO_SHARED)" if HIDE_SHARED else (SHARED_DATA if SHARED_DATA.is_dir() else "absent")
    return f"shared test data: {where}"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test when the folder is absent or hidden."""
    if HIDE_SHARED:
        pytest.skip("shared test data hidden (MINIMIND_TEST_NO_SHARED=1)")
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
    old = os.environ.get("MINIMIND_CACHE")
    os.environ["MINIMIND_CACHE"] = str(tmp_path_factory.mktemp("token-cache"))
    yield
    if old is None:
        os.environ.pop("MINIMIND_CACHE", None)
    else:
        os.environ["MINIMIND_CACHE"] = old


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> Path:
    """A tokenizer the project trains itself (about a second, once per run): vocabulary 6400,
    MiniMind's special tokens and chat template, but ids of its own (helpers.train_project_tokenizer)."""
    from helpers import train_project_tokenizer

    return train_project_tokenizer(tmp_path_factory.mktemp("project-tokenizer"))


@pytest.fixture(scope="session")
def tok(tok_dir):
    """The project-made tokenizer of `tok_dir`, shared by the test modules."""
    from minimind.tokenizer import Tokenizer

    return Tokenizer.from_dir(tok_dir)


@pytest.fixture(scope="session")
def minimind_tok_dir(shared_data) -> Path:
    """MiniMind's minimind3 tokenizer directory (with <think> tokens), for compatibility tests."""
    return shared_data / "tokenizer" / "minimind3"


@pytest.fixture(scope="session")
def minimind_tok(minimind_tok_dir):
    """MiniMind's minimind3 tokenizer, for tests of its exact ids and template output."""
    from minimind.tokenizer import Tokenizer

    return Tokenizer.from_dir(minimind_tok_dir)
