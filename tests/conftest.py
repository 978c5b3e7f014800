"""Shared test settings.

One torch thread: the tests use tiny models, for which thread start-up costs more than it saves, and a fixed thread
count keeps float results identical from run to run (results change with the thread count: docs/experiments.md).
"""
import torch

torch.set_num_threads(1)
