"""What the commands, the notebooks and the web page share, above model/ and data/: the Python API
(`Captioner`), the training settings, command-line flags built from configs, attention pictures."""

from captioner.api import Caption, Captioner

__all__ = ["Caption", "Captioner"]
