"""Audio features: the Wav2Lip mel convention and a per-frame voice-activity track."""
