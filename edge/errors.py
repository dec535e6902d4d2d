"""One exception type for problems a user can fix, so every entry point can print one line."""


class UserError(Exception):
    """A problem with the user's input (file, config, data, model) that has a one-line remedy."""
