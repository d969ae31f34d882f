"""When quantization costs accuracy: which layers lost it, and why."""
