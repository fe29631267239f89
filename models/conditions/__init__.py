"""Realistic validation conditions (evaluation only, never training data).

See :mod:`.registry` for the list and ``scorestream eval retrieval --condition NAME``.
"""
