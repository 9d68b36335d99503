"""The commands: one module each (``get_args_parser``, ``main``, ``entry``); ``common`` holds what they share.

``train.py``, ``eval.py``, ``tools/*.py`` and the console scripts of ``pyproject.toml`` only call ``entry``.
"""
