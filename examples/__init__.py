"""Runnable lessons of the training loop, one script each: `python examples/NAME.py`.

This folder is a package only so that configs can name its classes
(`class_path: examples.linear_regression.LineData`) when `trainer` runs from the
repository root; each script also runs on its own.
"""
