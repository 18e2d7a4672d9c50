"""Build docs/lipsync-contact-sheet.png: mouth crops over a spoken sentence, old vs new.

Rows: the bundled portrait as a still and a talking template (the portrait generated
speaking sentence A), each driven by sentence B (espeak-ng), by the previous default
generator (``mouthwarp``, from a checkout given with ``--old-src``) and by ``rewrite``.
Every row is labelled with its sync score (``heygem-diagnose sync-score``).

    python docs/contact_sheet.py --old-src /path/to/old/checkout  # needs espeak-ng
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np

SENTENCE_A = "The quick brown fox jumps over the lazy dog. Maybe we should meet at the park."
SENTENCE_B = "Please bring my papers back by Monday morning, and then we can talk."
GENERATE = (
    "import sys; from pathlib import Path; from heygem.config import GenerateOptions; "
    "from heygem.pipeline import Pipeline; "
    "Pipeline(GenerateOptions(cache_dir=Path(sys.argv[4]))).generate("
    "Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))"
)


def generate(src: Path | None, audio: Path, video: Path, out: Path, cache: Path) -> Path:
    env = dict(os.environ, PYTHONPATH=str(src)) if src else dict(os.environ)
    cmd = [sys.executable, "-c", GENERATE, str(audio), str(video), str(out), str(cache)]
    # Run outside the checkout: `python -c` puts the working directory before PYTHONPATH.
    subprocess.run(cmd, check=True, env=env, cwd=out.parent)
    return out


def mouth_strip(video: Path, box: tuple[int, int, int, int], frames: list[int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    tiles = []
    with av.open(str(video)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in frames:
                tile = frame.to_ndarray(format="bgr24")[y0:y1, x0:x1]
                tiles.append(cv2.resize(tile, (150, 120), interpolation=cv2.INTER_CUBIC))
    return np.hstack(tiles)


def label(strip: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((22, strip.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, strip])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old-src", type=Path, required=True, help="checkout with mouthwarp")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).with_name("lipsync-contact-sheet.png")
    )
    args = parser.parse_args()
    from diagnostics.syncscore import sync_score
    from heygem.demo import iter_template_frames, write_video

    work = Path(tempfile.mkdtemp(prefix="heygem-sheet-"))
    a, b = work / "a.wav", work / "b.wav"
    subprocess.run(["espeak-ng", "-w", str(a), SENTENCE_A], check=True)
    subprocess.run(["espeak-ng", "-w", str(b), "-p", "60", SENTENCE_B], check=True)
    still = write_video(work / "still.mp4", iter_template_frames(2.0, size=(640, 360), sway=0.0))
    talking = generate(None, a, still, work / "talking.mp4", work / "cache-new")
    box = (244, 116, 332, 186)  # the portrait's mouth and chin at 640x360
    frames = list(range(6, 150, 12))
    rows = []
    for template_name, template in (("still portrait", still), ("talking template", talking)):
        for generator, src in (("old mouthwarp", args.old_src), ("new rewrite", None)):
            cache = work / f"cache-{'old' if src else 'new'}"
            out = generate(src, b, template, work / f"{template_name}-{generator}.mp4", cache)
            score = sync_score(out, b)
            text = (
                f"{template_name}, {generator}: sync {score.score:.2f} "
                f"(control {score.control:.2f})"
            )
            rows.append(label(mouth_strip(out, box, frames), text))
            print(text)
    cv2.imwrite(str(args.out), np.vstack(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
