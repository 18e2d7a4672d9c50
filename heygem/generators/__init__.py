"""Lip-sync generators (ONNX Runtime and torch back-ends)."""
