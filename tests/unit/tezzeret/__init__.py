"""Tezzeret: compiling blueprints into kernel bundles; the bundle format."""
