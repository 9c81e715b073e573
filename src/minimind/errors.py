"""The one exception type users see.

Anything that is the user's fault (a missing file, a malformed config, a bad flag value)
raises MiniMindError with a message that names the file and what is wrong. The CLI prints
it as a single line; a traceback means a bug in minimind, not in the user's input.
"""


class MiniMindError(Exception):
    """A problem with the user's input, reported as one clear line."""
