"""Shared test set-up: make `gen` and `invariants` importable, pin Hypothesis for CI, and the
`one_thread` fixture (``pytestmark = pytest.mark.usefixtures("one_thread")`` in a test file)."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import Phase, settings

sys.path.insert(0, os.path.dirname(__file__))

# "ci" (the default): the same examples on every run, no example database, no deadline.
# HYPOTHESIS_PROFILE=explore: fresh random examples, no shrinking (fast bug hunting);
# HYPOTHESIS_PROFILE=dev: fresh random examples with shrinking.
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile("dev", deadline=None, database=None)
settings.register_profile("explore", deadline=None, database=None, phases=[Phase.explicit, Phase.generate])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test, restored after: the method tests train tiny nets,
    where a second thread only waits for a core on a shared machine."""
    was = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(was)
