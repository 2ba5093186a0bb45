"""Simic: trains Tamiyo's GNN policy on procedurally varied tasks (imitation, then PPO).

See docs/simic.md: the tasks (:mod:`~esper.simic.tasks`), the episodes on real Esper runs
(:mod:`~esper.simic.rollout`), the reward (:mod:`~esper.simic.rewards`), the learning rules
(:mod:`~esper.simic.ppo`) and the training run (:mod:`~esper.simic.train`).
"""
