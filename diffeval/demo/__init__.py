"""The bundled demo, a plugin like any other: 8x8 digits, a small trained denoiser and a digits classifier.

Registers its data set, extractor, sampler factory, named configs (``demo``, ``demo-gaussian``, ``s2n``) and the
``diffeval demo`` command from :mod:`~diffeval.demo.plugin`. May import any room of diffeval (it is the top);
no module outside ``demo/`` imports it.
"""
