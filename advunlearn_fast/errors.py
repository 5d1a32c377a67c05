"""What the user is told: refusals, interruptions, notices."""

import sys


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits non-zero."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the user can do next (what is kept, how to continue)."""


def notice(message: str) -> None:
    """One line to stderr that leaves a running progress bar intact; from rank 0 only when
    several processes run (they would all say the same)."""
    from tqdm.auto import tqdm

    from advunlearn_fast.distributed import is_main

    if is_main():
        tqdm.write(f"advunlearn: {message}", file=sys.stderr)
