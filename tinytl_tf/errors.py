"""The one base class of this package's errors, stdlib only so every room (the device side too) can use it.

A `TinyTLError` is a mistake the user can fix, or a state they must act on: its message says what is wrong and
what to do. The command lines print it as one `error:` line (`tinytl_tf.cliargs.run_command`). Each subclass also
derives from the builtin error that describes it (ValueError for bad input, RuntimeError for a failed step), so
callers may catch either.
"""


class TinyTLError(Exception):
    """Base of every error this package raises on purpose; `exit_status` is the command line's status for it."""

    exit_status = 2
