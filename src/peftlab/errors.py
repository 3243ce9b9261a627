"""The one exception type for user mistakes.

Every bad input (a config value, a slot name, a file) raises `PeftlabError`, a `ValueError`, with a
one-line message naming what was wrong. The CLI prints that line and exits 2; anything else is a bug.
"""


class PeftlabError(ValueError):
    """A user error: bad config, bad target, bad file. The message names the offending value."""
