"""Data sets, models, stacked training and the measurements of the theory papers."""
