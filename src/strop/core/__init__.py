"""What every stage may import: configuration, errors, the run directory, output-path checks,
suggestions, logging set-up, thread sizing and the pickle guard.

Nothing here imports another strop package, and nothing here imports torch at module level.
"""

__version__ = "0.1.0"
