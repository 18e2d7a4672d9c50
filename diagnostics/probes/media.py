"""PyAV/FFmpeg codecs the pipeline needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from diagnostics.findings import Finding, Severity
from diagnostics.probes.base import never_raises

# (codec name, mode 'r' decode / 'w' encode, what the pipeline uses it for)
Mode = Literal["r", "w"]
REQUIRED_CODECS: tuple[tuple[str, Mode, str], ...] = (
    ("libx264", "w", "H.264 encoder for the output video"),
    ("aac", "w", "AAC encoder for the output audio"),
    ("h264", "r", "H.264 decoder for template videos"),
)


@never_raises("av-codecs", "PyAV codecs")
def probe_av_codecs(required: Sequence[tuple[str, Mode, str]] = REQUIRED_CODECS) -> Finding:
    import av
    from av.codec import Codec

    evidence = [f"av {av.__version__}, {len(av.codecs_available)} codecs available"]
    missing = []
    for name, mode, purpose in required:
        kind = "encoder" if mode == "w" else "decoder"
        try:
            codec = Codec(name, mode)
        except Exception as exc:  # noqa: BLE001 - UnknownCodecError and friends
            missing.append(f"{name} {kind}")
            evidence.append(f"{name} {kind} ({purpose}): missing ({type(exc).__name__})")
            continue
        evidence.append(f"{name} {kind} ({purpose}): {codec.long_name}")
    if not missing:
        return Finding("av-codecs", Severity.OK, "PyAV codecs", evidence)
    return Finding(
        "av-codecs",
        Severity.FAIL,
        "PyAV codecs",
        evidence,
        f"Missing {', '.join(missing)}: install the PyPI binary wheel (pip install --force-"
        "reinstall av), whose bundled FFmpeg has them; a PyAV built from source uses the "
        "system FFmpeg, which needs --enable-libx264 (--enable-gpl).",
    )
