"""Fixtures for topology/: a fixed two-node SSH cluster, the recipes, and a known (fake) master key."""

from __future__ import annotations

from pathlib import Path

import pytest

from topology.inventory import Cluster, load_cluster
from topology.kinds import PlanSecrets
from topology.plan import Secret
from topology.recipe import Recipe, load_recipe

DATA_DIR = Path(__file__).parent / "data"
# A recognisable value: the tests assert it never shows up in printed plans.
REAL_MASTER_KEY = "sk-this-must-never-be-printed-4b1d"


@pytest.fixture
def two_sparks() -> Cluster:
    return load_cluster(DATA_DIR / "two-sparks.yaml")


@pytest.fixture
def gemma() -> Recipe:
    return load_recipe("gemma4-26b")


@pytest.fixture
def tiny() -> Recipe:
    return load_recipe("tiny")


@pytest.fixture
def real_master_key() -> str:
    return REAL_MASTER_KEY


@pytest.fixture
def plan_secrets() -> PlanSecrets:
    return PlanSecrets(litellm_master_key=Secret(secret=REAL_MASTER_KEY))


@pytest.fixture
def data_dir() -> Path:
    return DATA_DIR
