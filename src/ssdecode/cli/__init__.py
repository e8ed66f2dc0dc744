"""The ``ssdecode`` command line (main.py; ``bench`` and ``plan`` in their own modules): the only
package that prints."""
from ssdecode.cli.main import main

__all__ = ["main"]
