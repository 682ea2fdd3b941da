"""mad: a toolkit for studying model collapse in self-consuming generative loops.

Every subcommand works on plain image folders so that a loop is a shell script.
"""

__version__ = "0.1.0"
