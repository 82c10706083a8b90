"""The diffusion process itself: noise schedules as log-SNR, and the denoiser view of a model.

Owns :mod:`~diffeval.diffusion.schedules` (every schedule converted once into log-SNR λ(t); presets, constructors,
zero-terminal-SNR rescale, timestep spacings) and :mod:`~diffeval.diffusion.denoiser` (model + schedule +
prediction type → ``x0_hat``, ``eps_hat``), which samplers, bits/dim and the checks all read. May import ``core``
only.
"""
