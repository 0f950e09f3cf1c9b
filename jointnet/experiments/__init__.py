"""Experiments: data, task streams, the trainer, metrics and the runner."""
