"""The one compiled part of heygem-harness; everything else is declared in pyproject.toml.

``heygem.face._ert`` runs dlib's landmark model on its stored arrays (see
heygem/face/shape_predictor.py): plain C on the buffer protocol, nothing to build it but
a C compiler. It is optional: without a compiler the install still succeeds and the
landmarks come from dlib's own predictor (the same points, after dlib's 0.36 s model load
in every job; the log and ``heygem-diagnose env`` say so). ``-ffp-contract=off``: no fused
multiply-adds, so every product is rounded on its own, as in dlib.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "heygem.face._ert",
            sources=["heygem/face/_ert.c"],
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math"],
            optional=True,
        )
    ]
)
