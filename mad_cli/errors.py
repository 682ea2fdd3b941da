"""The one exception type the CLI turns into a single-line message and exit code 1.

Library code raises `MadError` for anything the user can fix (a missing file, a bad
flag value, an undecodable image). Everything else is a bug and keeps its traceback.
"""


class MadError(Exception):
    """A failure the user can fix; the message names the file or flag at fault."""
