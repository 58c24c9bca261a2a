"""Pluggable inference engines behind one vocabulary of options.

Each engine lives in its own folder: ``config.py`` is light (no heavy imports) and ``engine.py`` or
``launcher.py`` holds the implementation. :mod:`backends.registry` maps a name to ``"module:Class"``.
"""
