"""Shared test set-up: make `gen` and `invariants` importable and pin Hypothesis for CI."""

from __future__ import annotations

import os
import sys

from hypothesis import Phase, settings

sys.path.insert(0, os.path.dirname(__file__))

# "ci" (the default): the same examples on every run, no example database, no deadline.
# HYPOTHESIS_PROFILE=explore: fresh random examples, no shrinking (fast bug hunting);
# HYPOTHESIS_PROFILE=dev: fresh random examples with shrinking.
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile("dev", deadline=None, database=None)
settings.register_profile("explore", deadline=None, database=None, phases=[Phase.explicit, Phase.generate])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
