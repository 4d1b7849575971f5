"""Tests of the TensorFlow SavedModel backend."""
