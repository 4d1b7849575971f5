"""Tests of server/models."""
