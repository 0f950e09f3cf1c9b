"""Continual-learning methods as strategies over the JointNet graph API."""
