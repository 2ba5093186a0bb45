"""Urza, the artifact library: blueprints, kernels and their benchmark reports.

``esper.urza.client`` needs only the core install (httpx); the server side (``database``,
``models``, ``repository``, ``blobs``, ``api``) needs the ``server`` extra. This package's
``__init__`` imports neither, so the client stays importable without SQLAlchemy.
"""
