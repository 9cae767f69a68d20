"""Autoencoders mapping pixels to the space the denoiser works in."""
