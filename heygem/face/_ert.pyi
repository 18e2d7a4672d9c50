# The compiled landmark kernel (heygem/face/_ert.c), called by heygem.face.shape_predictor
# with C-contiguous arrays (it reads them through the buffer protocol).
import numpy as np

Buffer = np.ndarray

def predict(
    gray: Buffer,
    width: int,
    height: int,
    left: int,
    top: int,
    right: int,
    bottom: int,
    layout: tuple[int, int, int, int, int],
    initial: Buffer,
    centred: Buffer,
    sum_squares: float,
    anchors: Buffer,
    deltas: Buffer,
    pairs: Buffer,
    thresholds: Buffer,
    leaves: Buffer,
    out: Buffer,
    /,
) -> None: ...
