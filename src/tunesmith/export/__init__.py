"""Exports of a finished run: standalone folders, ONNX and TorchScript, each checked against PyTorch."""
