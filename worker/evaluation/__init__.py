"""Downstream evaluation: labelled datasets, and the comparison of models fine-tuned (or probed) on them.

``labelled`` (reading and validating labelled datasets) and the settings/results schemas are torch-free, so
that the API can validate uploads and requests with the same code that the worker runs.
"""
