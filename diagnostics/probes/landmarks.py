"""The face landmark model: how a job will run it (compiled kernel on stored arrays, or
dlib's own reader in every job) and why."""

from __future__ import annotations

from pathlib import Path

from diagnostics.findings import Finding, Severity
from diagnostics.probes.base import never_raises

TITLE = "Face landmark model"


@never_raises("landmarks", TITLE)
def probe_landmarks(store: Path | None = None) -> Finding:
    from heygem.face import landmark_store
    from heygem.face.landmarks import LandmarkModelMissing, default_store, model_path
    from heygem.face.shape_predictor import kernel_available

    try:
        model = model_path()
    except LandmarkModelMissing as exc:
        return Finding("landmarks", Severity.FAIL, TITLE, [exc.message], exc.hint)
    store = store or default_store()
    entry = landmark_store.entry_for(model, store)
    evidence = [f"model: {model} ({model.stat().st_size / 1e6:.1f} MB)"]
    if not kernel_available():
        evidence.append("kernel heygem.face._ert: not built")
        return Finding(
            "landmarks",
            Severity.WARN,
            TITLE,
            evidence,
            "heygem-harness was installed without a C compiler, so every job loads dlib's "
            "landmark model (+0.4 s a job, the same landmarks): install gcc and reinstall "
            "(pip install --force-reinstall --no-deps heygem-harness, or -e . from a clone).",
        )
    evidence.append("kernel heygem.face._ert: built")
    failed = landmark_store.failure_note(entry)
    if failed.exists():
        evidence.append(f"conversion failed earlier: {failed.read_text().strip()}")
        return Finding(
            "landmarks",
            Severity.WARN,
            TITLE,
            evidence,
            f"jobs use dlib's reader (+0.4 s a job). Delete {failed} and run "
            "`python -m heygem.face.landmark_store` to see the error.",
        )
    if (entry / "leaves.npy").exists():
        evidence.append(f"arrays stored: {entry}")
        return Finding("landmarks", Severity.OK, TITLE, evidence)
    evidence.append(f"arrays not stored yet (would be {entry})")
    return Finding(
        "landmarks",
        Severity.INFO,
        TITLE,
        evidence,
        "The next job converts them in a child process (~1.5 s of one core) and uses dlib's "
        "reader meanwhile; `python -m heygem.face.landmark_store` converts them now.",
    )
