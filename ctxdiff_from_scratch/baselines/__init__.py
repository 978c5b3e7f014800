"""Baselines that the paper's claims are measured against, trained and evaluated like the shipped models.

* ``prompt_diffusion``: a Prompt-Diffusion-style model (Wang et al. 2023, "In-Context Learning Unlocked for Diffusion
  Models"): the context is example *pairs* (source, target) read by the query adapter's convolutions; the UNet's
  cross-attention sees the prompt only.
* ``glyph_retrieval``: GlyphWorld without a generator: the training font whose glyphs best match the context.
"""
