"""Tests of server/protocols/serving_v1."""
