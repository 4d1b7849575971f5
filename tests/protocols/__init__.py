"""Tests of server/protocols."""
