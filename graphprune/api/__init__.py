"""The public API: PyTorch models, ONNX files, iterative schedules and recovery."""
