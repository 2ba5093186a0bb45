"""Tolaria, the trainer: the training loop, the controller that grows the model, the governor."""
