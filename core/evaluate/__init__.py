"""Measuring a model: loading and running it on batches of images, the accuracy metrics, an
evaluation on the evaluation set and the latency per image."""
