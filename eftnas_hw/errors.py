"""User-facing errors and warnings: one line each on stderr; an error exits with code 2."""
import sys


class UserError(Exception):
    """A mistake in the user's input (paths, configs, budgets), not a bug in eftnas-hw."""


def warn(message: str) -> None:
    """A one-line warning the user must see (e.g. a latency table used on another machine because of --force).
    Printed, not sent through `warnings`: library warnings are filtered where they arise, these never are."""
    print(f"eftnas-hw: warning: {message}", file=sys.stderr)
