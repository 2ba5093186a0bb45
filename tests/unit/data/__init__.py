"""Unit tests of the offline datasets."""
