"""fsclone: make a target tree an exact copy of a source tree, in parallel passes."""

__version__ = "0.1.0"
