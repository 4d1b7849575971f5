"""Tests: one folder per package and protocol of the code; servers and fakes they start live in tests/support."""
