"""ctxdiff_from_scratch: Context Diffusion (Najdenkoska et al., arXiv 2312.03584) built from scratch.

Import submodules directly (``from ctxdiff_from_scratch.data import ShapesWorld``); this top level stays light so
that ``import ctxdiff_from_scratch`` does not pull in heavy optional libraries.
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    """Lazy top-level exports, so that ``import ctxdiff_from_scratch`` stays light (PEP 562)."""
    if name == "ContextDiffusionPipeline":
        from .pipeline import ContextDiffusionPipeline

        return ContextDiffusionPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
