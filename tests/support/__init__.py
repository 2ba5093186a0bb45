"""Test-only support code that is neither a fixture nor a server (e.g. the stand-in kubelet).

Nothing under ``src/`` or ``operator/`` may import from here.
"""
