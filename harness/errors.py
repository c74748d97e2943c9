"""One exception type for problems the user must fix, and the main() wrapper
that turns it into a one-line message and a non-zero exit instead of a traceback."""
import sys


class HarnessError(Exception):
    """A problem with the inputs or the environment (missing binary, bad workload,
    server that would not start, unknown BACKEND). Its message is shown as is."""


def run_main(main):
    """Runs main(); a HarnessError exits 2 with 'error: ...' on stderr."""
    try:
        sys.exit(main())
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
