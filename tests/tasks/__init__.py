"""Tests of server/tasks."""
