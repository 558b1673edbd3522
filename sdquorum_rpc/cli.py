"""What every command-line entry point shares: one-line errors, exit codes, logging set-up.

Exit codes: 0 success; 1 unexpected failure; 2 bad usage or input; 3 wrong state (for example the
node is not activated); 4 a verification failed; 5 network or TLS failure; 6 permission denied;
130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from sdquorum.errors import (
    PeerError,
    PermissionDeniedError,
    SdquorumError,
    StateError,
    TransportError,
    UsageError,
)

__all__ = ["EXIT_CODES", "exit_code_for", "run_main"]

EXIT_CODES = {
    "ok": 0,
    "unexpected": 1,
    "usage": 2,
    "state": 3,
    "verification": 4,
    "transport": 5,
    "permission": 6,
    "interrupted": 130,
}


def exit_code_for(e: SdquorumError) -> int:
    if isinstance(e, PermissionDeniedError):
        return EXIT_CODES["permission"]
    if isinstance(e, StateError):
        return EXIT_CODES["state"]
    if isinstance(e, UsageError):
        return EXIT_CODES["usage"]
    if isinstance(e, PeerError):
        return EXIT_CODES["verification"]
    if isinstance(e, TransportError):
        return EXIT_CODES["transport"]
    return EXIT_CODES["unexpected"]


def run_main(prog: str, body: Callable[[], int], debug: bool) -> int:
    """Run ``body``; a project error becomes one line on stderr and its exit code."""
    try:
        return body()
    except SdquorumError as e:
        if debug:
            import traceback  # only with --debug: not a cost of every start

            traceback.print_exc()
        print(f"{prog}: error: {e}", file=sys.stderr)
        return exit_code_for(e)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_CODES["interrupted"]
    except Exception as e:
        if debug:
            import traceback  # only with --debug: not a cost of every start

            traceback.print_exc()
        print(
            f"{prog}: unexpected error: {type(e).__name__}: {e} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_CODES["unexpected"]
