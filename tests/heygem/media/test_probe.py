"""Inputs are media files: formats that refer to further files are refused before reading."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from heygem.errors import MediaUnreadable
from heygem.media.probe import open_container, probe_audio
from tests.helpers import write_aac


def write_secret_ts(path: Path) -> Path:
    """A short MPEG-TS tone: the kind of file an HLS playlist names as its segment."""
    t = np.arange(16000 * 2) / 16000
    return write_aac(path, (0.3 * np.sin(2 * np.pi * 1234 * t))[None], 16000, "mpegts")


def playlist_naming(segment: Path, path: Path) -> Path:
    path.write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:8\n#EXTINF:2.0,\n"
        f"{segment}\n#EXT-X-ENDLIST\n"
    )
    return path


@pytest.mark.parametrize("name", ["speech.m3u8", "speech.wav", "speech.mp4", "speech"])
def test_a_playlist_is_refused_whatever_its_name(tmp_path: Path, name: str) -> None:
    """FFmpeg's HLS demuxer would read the segment (any local media file) as the input."""
    (tmp_path / "outside").mkdir()
    secret = write_secret_ts(tmp_path / "outside" / "secret.ts")
    playlist = playlist_naming(secret, tmp_path / name)
    with av.open(str(secret)) as plain:  # the segment itself is a readable media file
        assert plain.streams.audio
    with pytest.raises(MediaUnreadable) as refused:
        probe_audio(playlist, max_seconds=600)
    assert str(secret) not in refused.value.message


def test_every_common_media_format_still_opens(tmp_path: Path) -> None:
    secret = write_secret_ts(tmp_path / "tone.ts")  # MPEG-TS is a media container: allowed
    with open_container(secret, "audio") as container:
        assert container.streams.audio
