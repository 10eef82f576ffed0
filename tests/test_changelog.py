"""CHANGELOG.md keeps the Keep a Changelog layout, and its claims about the API hold."""

import re

import pytest

from dllm_jax import sampling
from tests.conftest import REPO_ROOT

SECTIONS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def test_the_changelog_has_the_keep_a_changelog_layout():
  text = (REPO_ROOT / "CHANGELOG.md").read_text()
  assert text.startswith("# Changelog\n") and "keepachangelog.com" in text
  releases = re.findall(r"^## \[([^\]]+)\]", text, flags=re.M)
  assert releases and releases[0] == "Unreleased", releases
  unreleased = text.split("## [Unreleased]", 1)[1].split("\n## [", 1)[0]
  sections = re.findall(r"^### (.+)$", unreleased, flags=re.M)
  assert sections and set(sections) <= SECTIONS and len(sections) == len(set(sections)), sections
  flat = " ".join(unreleased.split())
  for needed in ("`BlockCache(2)` now raises", "--cache` is no longer a boolean",
                 "`none` (the default), `prefix` or `dual`"):
    assert needed in flat, needed


def test_the_announced_api_changes_hold():
  with pytest.raises(ValueError, match="BlockCache.mode must be one of"):
    sampling.BlockCache(2)
  assert sampling.BlockCache(refresh_every=2).mode == "dual"
