"""Media I/O with PyAV: probing and validating inputs, decoding, streamed encoding."""
