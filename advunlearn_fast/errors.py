"""What the user is told: refusals, interruptions, notices."""

import sys


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits non-zero."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the user can do next (what is kept, how to continue)."""


def notice(message: str) -> None:
    """One line to stderr that leaves a running progress bar intact."""
    from tqdm.auto import tqdm

    tqdm.write(f"advunlearn: {message}", file=sys.stderr)
