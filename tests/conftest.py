"""Shared fixtures. Each package's tests live in tests/<package>/."""

from __future__ import annotations
