"""mld's discovery layer: CP2K I/O, datasets, force matching, symbolic search, models, code generation."""

__version__ = "0.1.0"
