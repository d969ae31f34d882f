"""Every way a model is made: the variant registry, TensorFlow's converter (one SavedModel export, one
conversion per variant), MCT's quantization and its TFLite export, the target platform capabilities and the
cross-layer equalization the repair recipes use."""
