"""Models in and out: what a MODEL argument names, ONNX export, saved pruned modules."""
