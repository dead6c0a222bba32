"""The policy engine: compile objects into a snapshot; route and decide requests (``engine``);
the policy tester shared by ``zerogate policy test`` and the admin service (``tester``). No I/O.
"""

from zerogate.policy.engine import (
    CompiledApp,
    Context,
    Identity,
    Snapshot,
    Verdict,
    admin_application,
    compile_snapshot,
    compile_timeouts,
)

__all__ = [
    "CompiledApp",
    "Context",
    "Identity",
    "Snapshot",
    "Verdict",
    "admin_application",
    "compile_snapshot",
    "compile_timeouts",
]
