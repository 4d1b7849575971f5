"""Tests of server/models/backends: one folder per model format."""
