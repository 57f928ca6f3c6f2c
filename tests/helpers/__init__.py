"""Helpers for tests that need a fresh process (fake device counts) or share a step driver."""
