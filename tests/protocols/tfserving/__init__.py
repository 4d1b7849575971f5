"""Tests of server/protocols/tfserving."""
