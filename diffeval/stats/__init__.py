"""Statistics, and their honest uncertainty: float64 streaming feature moments, seed blocks and jackknife
standard errors.

Owns :mod:`~diffeval.stats.moments` (:class:`~diffeval.stats.moments.FeatureMoments`: float64 sums with merge,
validation and ``.npz`` I/O; feature-space identity checks) and :mod:`~diffeval.stats.uncertainty` (seed blocks
``seed mod K`` and their fingerprint, jackknife and block standard errors, pairing records for the gate, the 1/N
extrapolation behind FID∞). Pure numerics: may import ``core`` only.
"""
