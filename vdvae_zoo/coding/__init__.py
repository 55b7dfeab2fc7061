"""Lossless compression with bits-back coding: the coder (bitsback), the latent grid chosen per archive (grid), and
the archive format that `vdvae-zoo compress` writes (archive)."""
