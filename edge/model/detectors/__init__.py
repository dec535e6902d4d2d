"""Face-detector plug-ins, one file each, behind :mod:`edge.model.detect` (which builds them by name)."""
