"""Batch runs: the configurations to run and the summary of what each came to."""
