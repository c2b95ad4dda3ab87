"""Tests of the snapshotter library: a conformance suite run against every implementation."""
