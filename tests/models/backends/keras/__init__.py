"""Tests of the Keras 3 backend: its demo model through every protocol."""
