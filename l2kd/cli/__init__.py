"""Command lines: ``train``, ``test``, ``report``, ``demo``. The only layer that imports the loop."""
