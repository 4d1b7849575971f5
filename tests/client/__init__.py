"""Tests of the client library, CLI and load generator."""
