"""The bottom layer: what every other layer needs and nothing above it.

- :mod:`.progress`: the job protocol (generators that yield progress dicts, stop on an Event)
- :mod:`.device`: device choice, mixed precision, thread counts
- :mod:`.errors`: an exception -> the one sentence shown to the user
- :mod:`.files`: atomic writes

Imports nothing from the rest of the package and no heavy library at import time.
"""
