"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""


class UserError(Exception):
    """A mistake in the user's input (paths, configs, budgets), not a bug in eftnas-hw."""
