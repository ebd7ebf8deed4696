"""Analyses: pure functions of a model and its activations (see each module for its paper)."""
