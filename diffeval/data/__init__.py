"""Images in: specs (image folders, ``.npz`` batches, statistics files, registered data sets) become image sources,
read per file with headers first; sample grids and channel matching.

Owns :mod:`~diffeval.data.sources` (:func:`~diffeval.data.sources.open_source`, the one place a spec becomes
images; :data:`~diffeval.data.sources.DATASETS`; prompts) and :mod:`~diffeval.data.images` (grids, channel
matching). May import ``core`` and ``stats`` (a spec may name a statistics file).
"""
