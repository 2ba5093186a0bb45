"""Tolaria: the controller, governor, optimizer groups, trainer, catalog and report."""
