"""Measurements over trained nets (cushions, valleys, overtraining, acceleration).

Each measure is a small pure function over tensors; the training loop knows none of them.
"""
