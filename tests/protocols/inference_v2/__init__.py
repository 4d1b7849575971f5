"""Tests of server/protocols/inference_v2."""
