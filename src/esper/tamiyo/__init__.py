"""Tamiyo, the controller: decides when, where and with which kernel a model grows."""

from esper.tamiyo.heuristic import HeuristicPolicy
from esper.tamiyo.policy import KernelCandidate, Observation, Policy

__all__ = ["HeuristicPolicy", "KernelCandidate", "Observation", "Policy"]
