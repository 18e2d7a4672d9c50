"""heygem: a talking-head lip-sync generation pipeline that cannot hang silently."""

import os

# numpy's OpenBLAS starts a worker thread per core at import and, after every BLAS call,
# spins waiting for more work: 0.1-0.2 CPU-s of a 720p job on 2 cores (measured), taken
# from x264 and the model, for BLAS calls that are all small here (the mel filter bank,
# mouth planning). Set before numpy is imported; a user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
