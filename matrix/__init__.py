"""The version matrix: which library combinations and runtime settings work here.

``cells`` (axes, ids, tags, selection), ``install`` (a cell's virtualenv), ``run_cell``
(runs inside that virtualenv), ``load_probe`` (a HeyGem-sized DataLoader load),
``results`` (one JSON line per cell) and ``report`` (Markdown + HTML, hypothesis verdicts).
Everything but ``load_probe`` uses the standard library only, so the noxfile can import it.
"""
