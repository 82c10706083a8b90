"""The bundled demo: 8x8 digits, a small trained denoiser and a digits classifier."""
